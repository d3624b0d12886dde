"""`ctseg submit --host URL`: run the compiled spec on Kubeflow Pipelines."""
from __future__ import annotations

from pathlib import Path

from ctseg.commands import DEFAULT_WORKDIR


def register(sub) -> None:
    p = sub.add_parser("submit", help="submit the compiled pipeline spec to Kubeflow Pipelines",
                       description="Submit a spec written by `ctseg compile` to Kubeflow Pipelines with kfp.Client "
                                   "and print the run's id and link.")
    p.add_argument("--host", help="Pipelines API URL, e.g. http://localhost:8080 (default: $KF_PIPELINES_ENDPOINT)")
    p.add_argument("--spec", help="compiled spec (default: WORKDIR/kubeflow/ctseg_pipeline.yaml, where `ctseg compile` "
                                  "writes it)")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="work dir of the default spec file (default: ./out)")
    p.add_argument("--pipeline-root",
                   help="where the run writes its artifacts "
                        "(default: the spec's, from `ctseg compile --pipeline-root`)")
    p.add_argument("--experiment", help="experiment to file the run under (default: ctseg)")
    p.add_argument("--run-name", help="display name of the run (default: spec file name and time)")
    p.add_argument("--namespace", help="Kubernetes namespace of a multi-user Kubeflow (default: the client's)")
    p.add_argument("--token", help="bearer token for an authenticated endpoint (default: $KF_PIPELINES_TOKEN, "
                                   "which keeps it out of `ps` and shell history)")
    p.add_argument("--cookie", help="session cookie for a Dex/OIDC-protected endpoint, "
                                    "e.g. 'authservice_session=...' (default: $KF_PIPELINES_COOKIE)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ctseg.ircad import UNREAD_PREFIX
    from ctseg.pipeline.kubeflow_runner import SPEC_FILE
    from ctseg.pipeline.kubeflow_submit import DEFAULT_EXPERIMENT, submit

    submitted = submit(args.spec or Path(args.workdir) / SPEC_FILE, host=args.host,
                       experiment=args.experiment or DEFAULT_EXPERIMENT, run_name=args.run_name,
                       namespace=args.namespace, token=args.token, cookie=args.cookie,
                       pipeline_root=args.pipeline_root)
    print(f"run id: {submitted.run_id}")
    print(f"link:   {submitted.link}")
    print(f"root:   {submitted.pipeline_root}")
    if submitted.fingerprint:
        unread = submitted.fingerprint.startswith(UNREAD_PREFIX)
        print(f"data:   {submitted.fingerprint} (" + (
            "the data cannot be read from here, so the ingest step runs again rather than reuse a cached result"
            if unread else "as compiled: KFP may reuse the cached ingest step" if submitted.fingerprint
            == submitted.compiled_fingerprint else "changed since the spec was compiled: the ingest step runs again")
            + ")")
    return 0
