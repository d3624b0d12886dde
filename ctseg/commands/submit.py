"""`ctseg submit --host URL`: run the compiled spec on Kubeflow Pipelines."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("submit", help="submit the compiled pipeline spec to Kubeflow Pipelines",
                       description="Submit a spec written by `ctseg compile` to Kubeflow Pipelines with kfp.Client "
                                   "and print the run's id and link.")
    p.add_argument("--host", help="Pipelines API URL, e.g. http://localhost:8080 (default: $KF_PIPELINES_ENDPOINT)")
    p.add_argument("--spec", help="compiled spec (default: kubeflow/ctseg_pipeline.yaml)")
    p.add_argument("--experiment", help="experiment to file the run under (default: ctseg)")
    p.add_argument("--run-name", help="display name of the run (default: spec file name and time)")
    p.add_argument("--namespace", help="Kubernetes namespace of a multi-user Kubeflow (default: the client's)")
    p.add_argument("--token", help="bearer token for an authenticated endpoint")
    p.add_argument("--cookie", help="session cookie for a Dex/OIDC-protected endpoint, e.g. 'authservice_session=...'")
    p.set_defaults(func=run)


def run(args) -> int:
    from kubeflow.runner import DEFAULT_SPEC_FILE
    from kubeflow.submit import DEFAULT_EXPERIMENT, submit

    submitted = submit(args.spec or DEFAULT_SPEC_FILE, host=args.host, experiment=args.experiment or DEFAULT_EXPERIMENT,
                       run_name=args.run_name, namespace=args.namespace, token=args.token, cookie=args.cookie)
    print(f"run id: {submitted.run_id}")
    print(f"link:   {submitted.link}")
    return 0
