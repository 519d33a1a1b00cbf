# Run by the test command: Node.js and npm, then the official Teneo JavaScript SDK in tests/sdk (pinned by its
# package-lock.json) for tests/test_teneo_sdk.py, and TypeScript in tests/ts for the JS client's types.
# Node and npm come from Debian (packages nodejs and npm) when missing, only as root; the SDK from the npm
# registry when tests/sdk/node_modules is missing. Without either the SDK test skips (and fails under CI=true).
_node_setup() {
  local sdk
  sdk="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/sdk"
  local missing=()
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      echo "note: ${missing[*]} missing; install them as root with apt-get for the Teneo SDK test" >&2
      return 0
    fi
    echo "installing Debian's ${missing[*]} for the Teneo SDK test" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 \
      "${missing[@]}" >/dev/null
  fi
  if [ ! -d "$sdk/node_modules/@artificialsolutions/tie-api-client" ]; then
    echo "installing the Teneo JavaScript SDK in tests/sdk (npm ci)" >&2
    (cd "$sdk" && npm ci --no-audit --no-fund --loglevel=error >&2) ||
      echo "note: npm ci failed in tests/sdk; the Teneo SDK test will skip (or fail under CI=true)" >&2
  fi
  # TypeScript (pinned by tests/ts/package-lock.json) checks the JS client's types in tests/edge/test_client_node.py.
  if [ ! -x "$sdk/../ts/node_modules/.bin/tsc" ]; then
    echo "installing TypeScript in tests/ts (npm ci)" >&2
    (cd "$sdk/../ts" && npm ci --no-audit --no-fund --loglevel=error >&2) ||
      echo "note: npm ci failed in tests/ts; the client's type check will fail" >&2
  fi
}

_node_setup
