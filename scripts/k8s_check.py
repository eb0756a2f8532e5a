"""Offline Helm rendering and Kubernetes schema validation for the hopwarden chart.

Run with the Python that scripts/install-k8s-tools.sh prints (tests/helm.rs does):

  k8s_check.py render CHART OUT [--values FILE]... [--release NAME] [--namespace NS]
      checks the values against values.schema.json, renders the chart as
      `helm template` would, writes OUT/manifests.json (a list of
      {"template", "manifest"}) and OUT/NOTES.txt
  k8s_check.py lint CHART [--values FILE]...
      `helm lint --strict` (warnings fail too)
  k8s_check.py schema CHART --values FILE
      exits 1 when values.schema.json rejects the values (the error on stderr)
  k8s_check.py validate OUT
      every manifest of OUT/manifests.json against its schema, strict (unknown
      fields are errors): Kubernetes kinds with kubernetes-validate's schemas for
      each version in KUBE_VERSIONS; AuthorizationPolicy and ServiceMonitor with
      their CRDs' OpenAPI schemas (see crd_schema); a kind with no schema fails.

Each command ends with a line "N passed, N failed" and exits non-zero on any failure.
"""

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

# The chart's lowest supported version (Chart.yaml kubeVersion) and the newest
# kubernetes-validate knows.
KUBE_VERSIONS = ["1.30.0", "1.37.0"]

CRDS = Path(os.environ.get("HOPWARDEN_K8S_CRDS", Path(sys.executable).parent.parent / "k8s-crds"))
# kind -> (apiVersion, file in the npm package holding the CRD's schema literal)
CRD_SOURCES = {
    "AuthorizationPolicy": (
        "security.istio.io/v1",
        CRDS / "istio/security.istio.io/v1/AuthorizationPolicy.js",
    ),
    "ServiceMonitor": (
        "monitoring.coreos.com/v1",
        CRDS / "prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
    ),
}


def load_values(files):
    values = {}
    for f in files or []:
        merge(values, yaml.safe_load(Path(f).read_text()) or {})
    return values


def merge(into, extra):
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v


def finish(passed, failed):
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def cmd_render(a):
    values = load_values(a.values)
    with helm.Chart.load(a.chart) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name=a.release, namespace=a.namespace, is_install=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            (out / "NOTES.txt").write_text(text)
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append({"template": template, "manifest": doc})
    (out / "manifests.json").write_text(json.dumps(docs, indent=1))
    for d in docs:
        m = d["manifest"]
        print(f"rendered {m['kind']}/{m['metadata']['name']} from {d['template']}")
    finish(len(docs), 0)


def cmd_lint(a):
    report = helm.lint(a.chart, load_values(a.values), strict=True)
    failed = 0
    for m in report.get("messages") or []:
        # Severity: 1 info, 2 warning, 3 error; --strict fails on warnings.
        print(f"lint severity {m['severity']}: {m['path']}: {m['error']}")
        failed += m["severity"] >= 2
    for e in report.get("errors") or []:
        print(f"lint error: {e}")
        failed += 1
    finish(0 if failed else 1, failed)


def cmd_schema(a):
    values = load_values(a.values)
    with helm.Chart.load(a.chart) as chart:
        try:
            chart.validate_schema(values)
        except helm.HelmError as e:
            print(f"rejected: {e}", file=sys.stderr)
            finish(0, 1)
    print("accepted")
    finish(1, 0)


def strict(schema):
    """The schema with unknown fields forbidden wherever it lists properties, as the
    API server's strict field validation treats a structural CRD schema (fields
    under x-kubernetes-preserve-unknown-fields stay open)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


def crd_schema(kind):
    """The OpenAPI v3 schema of a CRD's kind, as the npm package embeds it (generated
    from the upstream CRD YAML): a JSON object literal after `const schema = `.
    `metadata` is checked separately against Kubernetes' own ObjectMeta schema."""
    _, source = CRD_SOURCES[kind]
    text = source.read_text()
    start = text.index("const schema = ") + len("const schema = ")
    end = text.index("\n};\n", start) + 2
    schema = json.loads(text[start:end])
    schema["properties"].pop("metadata")
    return strict(schema)


def object_meta_schema():
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    path = base / f"v{KUBE_VERSIONS[-1]}-local-strict" / "objectmeta-meta-v1.json"
    return json.loads(path.read_text())


def validate_crd(manifest):
    kind = manifest["kind"]
    api_version, _ = CRD_SOURCES[kind]
    if manifest.get("apiVersion") != api_version:
        return [f"apiVersion {manifest.get('apiVersion')!r}, want {api_version!r}"]
    body = copy.deepcopy(manifest)
    meta = body.pop("metadata", {})
    errors = []
    for schema, doc, where in [(crd_schema(kind), body, ""), (object_meta_schema(), meta, "metadata.")]:
        for e in jsonschema.Draft7Validator(schema).iter_errors(doc):
            errors.append(where + ".".join(str(p) for p in e.absolute_path) + ": " + e.message)
    return errors


def cmd_validate(a):
    docs = json.loads((Path(a.out) / "manifests.json").read_text())
    passed = failed = 0
    for d in docs:
        m = d["manifest"]
        name = f"{m.get('kind')}/{m.get('metadata', {}).get('name')}"
        errors = []
        if m.get("kind") in CRD_SOURCES:
            errors = validate_crd(m)
            against = "its CRD schema"
        else:
            for version in KUBE_VERSIONS:
                try:
                    kubernetes_validate.validate(m, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    errors.append(f"{version}: {'.'.join(str(p) for p in e.path)}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    errors.append(f"{version}: no schema: {e}")
            against = "Kubernetes " + ", ".join(KUBE_VERSIONS) + " (strict)"
        if errors:
            failed += 1
            for e in errors:
                print(f"FAIL {name} ({d['template']}): {e}")
        else:
            passed += 1
            print(f"ok   {name} against {against}")
    finish(passed, failed)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render")
    r.add_argument("chart")
    r.add_argument("out")
    r.add_argument("--values", action="append")
    r.add_argument("--release", default="hopwarden")
    r.add_argument("--namespace", default="hopwarden")
    r.set_defaults(run=cmd_render)
    lint = sub.add_parser("lint")
    lint.add_argument("chart")
    lint.add_argument("--values", action="append")
    lint.set_defaults(run=cmd_lint)
    s = sub.add_parser("schema")
    s.add_argument("chart")
    s.add_argument("--values", action="append", required=True)
    s.set_defaults(run=cmd_schema)
    v = sub.add_parser("validate")
    v.add_argument("out")
    v.set_defaults(run=cmd_validate)
    a = p.parse_args()
    a.run(a)


if __name__ == "__main__":
    main()
