#!/usr/bin/env bash
# Installs the tools that check the Helm chart, idempotently:
#   helm                 compiled from the Go module proxy (helm.sh/helm/v3)
#   kubernetes-validate  from PyPI, in a virtualenv of its own; it carries the
#                        Kubernetes JSON schemas inside the wheel, so manifests
#                        are validated offline (kubeconform would download
#                        them from GitHub at run time).
# Both land in ${PHOBOS_TOOLS:-$HOME/.cache/phobos/tools}/bin, where
# tests/test_helm.py looks for them. A second run checks the versions and does
# nothing. Compiling helm takes a few minutes on two cores the first time.
#
# Needs: go (>= 1.24) and python3 with the venv module.
set -euo pipefail

HELM_VERSION=v3.22.0
HELM_KUBE_MINOR=37
KUBERNETES_VALIDATE_VERSION=1.37.0

TOOLS=${PHOBOS_TOOLS:-$HOME/.cache/phobos/tools}
BIN=$TOOLS/bin
PYTHON=${PYTHON:-python3}

say() { printf '[helm-tools] %s\n' "$*" >&2; }
mkdir -p "$BIN"

# --- helm -------------------------------------------------------------------------
# `go install` skips the flags helm's Makefile passes to the linker: its own
# version (so this script can tell an old build from a new one) and the
# Kubernetes version that `helm template` and `helm lint` assume (1.20
# without it; the Makefile stamps the client-go minor, 1.37 for helm 3.22).
have_helm=$("$BIN/helm" version --template '{{.Version}}' 2>/dev/null || true)
if [ "$have_helm" = "$HELM_VERSION" ]; then
    say "helm $HELM_VERSION already in $BIN"
else
    command -v go >/dev/null || { say "go is needed to build helm (apt-get install golang, or https://go.dev/dl)"; exit 1; }
    say "building helm $HELM_VERSION from the Go module proxy into $BIN (a few minutes the first time)"
    started=$(date +%s)
    GOBIN="$BIN" CGO_ENABLED=0 GOFLAGS=-mod=mod go install \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
            -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_KUBE_MINOR \
            -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_KUBE_MINOR" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    say "helm built in $(( $(date +%s) - started )) s"
fi

# --- kubernetes-validate --------------------------------------------------------------
KV_ENV=$TOOLS/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
if [ -x "$KV_ENV/bin/kubernetes-validate" ] \
    && [ "$("$KV_ENV/bin/kubernetes-validate" --version 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ]; then
    say "kubernetes-validate $KUBERNETES_VALIDATE_VERSION already in $KV_ENV"
else
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $KV_ENV"
    rm -rf "$KV_ENV"
    "$PYTHON" -m venv "$KV_ENV"
    "$KV_ENV/bin/python" -m pip install -q --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
ln -sfn "$KV_ENV/bin/kubernetes-validate" "$BIN/kubernetes-validate"

say "ready: $BIN/helm ($("$BIN/helm" version --template '{{.Version}}')), $BIN/kubernetes-validate ($("$BIN/kubernetes-validate" --version))"
