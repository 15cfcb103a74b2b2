"""`segpipe submit`: a compiled pipeline JSON -> a Vertex AI PipelineJob, or a recurring schedule.

`--dry-run` builds exactly the same request objects with anonymous credentials and prints them
instead of sending them, so it works without credentials or network.
"""
from __future__ import annotations

import json
import sys

from components.errors import InputError


def build_job(compiled: str, project: str, region: str, display_name: str | None = None,
              credentials=None):
    from google.cloud import aiplatform

    with open(compiled) as f:
        spec = json.load(f)
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


def cli_main(args) -> dict:
    from google.auth.credentials import AnonymousCredentials

    credentials = AnonymousCredentials() if args.dry_run else None
    try:
        job = build_job(args.compiled, args.project, args.region, args.display_name, credentials)
    except FileNotFoundError:
        raise InputError(f"compiled pipeline not found: {args.compiled}") from None
    request = _job_request(job, args.project, args.region)
    display_name = request["pipeline_job"]["displayName"]
    if args.schedule:
        schedule_request = {
            "parent": request["parent"],
            "schedule": {
                "display_name": f"{display_name}-schedule",
                "cron": args.schedule,
                "max_concurrent_run_count": 1,
                "create_pipeline_job_request": request,
            },
        }
        if args.dry_run:
            print(json.dumps(schedule_request, indent=2), file=sys.stderr)
            return {"dry_run": True, "kind": "schedule", "cron": args.schedule, "request": schedule_request}
        schedule = job.create_schedule(
            display_name=schedule_request["schedule"]["display_name"], cron=args.schedule,
            max_concurrent_run_count=1, service_account=args.service_account)
        return {"dry_run": False, "kind": "schedule", "cron": args.schedule, "name": schedule.resource_name}
    if args.dry_run:
        print(json.dumps(request, indent=2), file=sys.stderr)
        return {"dry_run": True, "kind": "pipeline_job", "request": request}
    job.submit(service_account=args.service_account)
    return {"dry_run": False, "kind": "pipeline_job", "name": job.resource_name}
