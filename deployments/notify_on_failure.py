"""Be told when a longbatch run fails: a Prefect automation that posts to a webhook when a run
of `process-documents` or `collect-batches` ends Failed, Crashed or TimedOut.

    python deployments/notify_on_failure.py https://hooks.slack.com/services/T000/B000/XXXX

The URL is any endpoint taking a JSON POST: the body is {"text": "<subject>\\n<body>"}, which
Slack's incoming webhooks (and Mattermost's, and most chat tools') show as a message. It saves
a webhook block named `longbatch-failures` and an automation named `longbatch run failed`
(Prefect UI: Automations); running it again points both at the new URL. Needs PREFECT_API_URL.

Importing this module has no side effects; only running it creates anything.
"""

from __future__ import annotations

import sys
from datetime import timedelta

BLOCK_NAME = "longbatch-failures"
AUTOMATION_NAME = "longbatch run failed"
FLOWS = ["process-documents", "collect-batches"]
SUBJECT = "longbatch: {{ flow.name }} run {{ flow_run.name }} ended {{ flow_run.state.name }}"
BODY = ("{{ flow_run.state.message }}\n"
        "Deployment: {{ deployment.name }}. Parameters: {{ flow_run.parameters }}.\n"
        "Run page: {{ flow_run|ui_url }}")


def create(url: str) -> str:
    """Save the webhook block and (re)create the automation; return the automation's id."""
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    block = CustomWebhookNotificationBlock(name=BLOCK_NAME, url=url, method="POST",
                                           json_data={"text": "{{subject}}\n{{body}}"})
    block_id = block.save(BLOCK_NAME, overwrite=True)
    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(AUTOMATION_NAME):
            client.delete_automation(old.id)
    automation = Automation(
        name=AUTOMATION_NAME,
        description="A longbatch run failed, crashed or timed out: say why and link to it.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOWS},
            posture=Posture.Reactive, threshold=1, within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)],
    ).create()
    return str(automation.id)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].startswith(("http://", "https://")):
        sys.exit("usage: python deployments/notify_on_failure.py WEBHOOK_URL")
    print(f"automation '{AUTOMATION_NAME}' ({create(sys.argv[1])}) posts to the webhook block '{BLOCK_NAME}'")
