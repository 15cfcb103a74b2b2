"""`submit(compiled, project, region)` (`segpipe submit`): a compiled pipeline JSON -> a Vertex AI
PipelineJob, or a recurring schedule.

`dry_run` builds exactly the same request objects with anonymous credentials and prints them
instead of sending them, so it works without credentials or network.
"""
from __future__ import annotations

import json
import os
import sys

from components.errors import InputError


def build_job(compiled: str, project: str, region: str, display_name: str | None = None,
              credentials=None):
    from google.cloud import aiplatform

    with open(compiled) as f:
        try:
            spec = json.load(f)
        except json.JSONDecodeError as err:
            raise InputError(f"{compiled}: not a compiled pipeline JSON ({err})") from None
    runtime = spec.get("runtimeConfig", {})
    pipeline_root = runtime.get("gcsOutputDirectory")
    name = display_name or spec.get("displayName") or spec.get("pipelineSpec", {}).get(
        "pipelineInfo", {}).get("name", "segpipe")
    return aiplatform.PipelineJob(
        display_name=name,
        template_path=compiled,
        pipeline_root=pipeline_root,
        project=project,
        location=region,
        credentials=credentials,
        # Every scheduled run must retrain and re-evaluate on fresh data.
        enable_caching=False,
    )


def _job_request(job, project: str, region: str) -> dict:
    return {
        "parent": f"projects/{project}/locations/{region}",
        "pipeline_job": job.to_dict(),
    }


def submit(compiled: str, project: str, region: str, *, schedule: str | None = None,
           display_name: str | None = None, service_account: str | None = None,
           dry_run: bool = False) -> dict:
    """Creates the PipelineJob (or, with a cron `schedule`, a schedule of it); returns a summary.
    With dry_run, the request is printed to stderr and returned instead of sent."""
    if not os.path.isfile(compiled):
        raise InputError(f"compiled pipeline not found: {compiled}")
    from google.auth.credentials import AnonymousCredentials

    credentials = AnonymousCredentials() if dry_run else None
    job = build_job(compiled, project, region, display_name, credentials)
    request = _job_request(job, project, region)
    job_name = request["pipeline_job"]["displayName"]
    if schedule:
        schedule_request = {
            "parent": request["parent"],
            "schedule": {
                "display_name": f"{job_name}-schedule",
                "cron": schedule,
                "max_concurrent_run_count": 1,
                "create_pipeline_job_request": request,
            },
        }
        if dry_run:
            print(json.dumps(schedule_request, indent=2), file=sys.stderr)
            return {"dry_run": True, "kind": "schedule", "cron": schedule, "request": schedule_request}
        created = job.create_schedule(
            display_name=schedule_request["schedule"]["display_name"], cron=schedule,
            max_concurrent_run_count=1, service_account=service_account)
        return {"dry_run": False, "kind": "schedule", "cron": schedule, "name": created.resource_name}
    if dry_run:
        print(json.dumps(request, indent=2), file=sys.stderr)
        return {"dry_run": True, "kind": "pipeline_job", "request": request}
    job.submit(service_account=service_account)
    return {"dry_run": False, "kind": "pipeline_job", "name": job.resource_name}
