# shellcheck shell=bash
#
# scripts/lib/js.sh — what the Node-driven stages need, installed when missing: Node (>= 18)
# with the packages of tests/js, a real Rails backend (Debian's ruby-actioncable with both
# adapters), redis-server and Chromium. Sourced after scripts/lib/pg.sh (pg_apt_install).
#
#   js_ensure_redis                 redis-server on PATH
#   js_ensure_rails                 ruby with action_cable, active_record, pg, redis
#   js_ensure_chromium              chromium on PATH
#   js_ensure_python_websocket TARGET_DIR
#                                   python3 with websocket-client (the topic WebSocket's
#                                   Python client, tests/python) on PYTHONPATH
#   js_ensure_node TARGET_DIR       node >= 18 on PATH (an npm-shipped one when the system's
#                                   is older, or CABLE_TEST_NODE_VERSION), then `npm ci` in
#                                   tests/js; returns non-zero when the packages do not install

js_ensure_redis() {
    command -v redis-server >/dev/null 2>&1 || pg_apt_install redis-server
}

js_ensure_rails() {
    if ! ruby -e 'require "action_cable"; require "active_record"; require "pg"; require "redis"' 2>/dev/null; then
        pg_apt_install ruby ruby-actioncable ruby-activerecord ruby-pg ruby-redis
    fi
}

js_ensure_chromium() {
    command -v chromium >/dev/null 2>&1 || pg_apt_install chromium
}

# websocket-client from PyPI, pinned and checked: Debian 12's python3-websocket (1.2.3) takes
# close code 1012 (service restart, what the topic WebSocket sends at shutdown) for a protocol
# error; releases since accept it. Pure Python: the wheel is unpacked under target/ and put on
# PYTHONPATH, nothing is installed into the system's Python.
JS_WEBSOCKET_CLIENT_VERSION=1.8.0
JS_WEBSOCKET_CLIENT_SHA256=17b44cc997f5c498e809b22cdf2d9c7a9e71c02c8cc2b6c56e7c2d1239bfa526

js_ensure_python_websocket() {
    local target_dir=${1:?js_ensure_python_websocket: target dir required}
    command -v python3 >/dev/null 2>&1 || pg_apt_install python3
    mkdir -p "$target_dir/python"
    local dir
    dir="$(cd "$target_dir/python" && pwd)/websocket-client-$JS_WEBSOCKET_CLIENT_VERSION"
    if [ ! -f "$dir/websocket/__init__.py" ]; then
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
        python3 - "$dir.tmp" "$JS_WEBSOCKET_CLIENT_VERSION" "$JS_WEBSOCKET_CLIENT_SHA256" <<'PY' || return 1
import hashlib, io, json, sys, urllib.request, zipfile
into, version, sha256 = sys.argv[1:]
index = json.load(urllib.request.urlopen("https://pypi.org/pypi/websocket-client/json", timeout=60))
wheel = next(u for u in index["releases"][version] if u["packagetype"] == "bdist_wheel")
data = urllib.request.urlopen(wheel["url"], timeout=60).read()
if hashlib.sha256(data).hexdigest() != sha256:
    sys.exit("websocket-client %s: the wheel's sha256 is not the pinned one" % version)
zipfile.ZipFile(io.BytesIO(data)).extractall(into)
PY
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
    fi
    export PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}"
    python3 -c "import websocket, sys; assert websocket.__version__ == sys.argv[1], websocket.__version__" \
        "$JS_WEBSOCKET_CLIENT_VERSION"
}

js_ensure_node() {
    local target_dir=${1:?js_ensure_node: target dir required}
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        pg_apt_install nodejs npm
    fi
    # Debian 12 ships Node 18, newer Debian more. An older system Node, or
    # CABLE_TEST_NODE_VERSION=<version> (to test on another Node on purpose), takes the Node
    # binary the npm registry ships in node-linux-<arch>@<version>.
    local min=18 want=${CABLE_TEST_NODE_VERSION:-} major arch node_dir node_bin
    major=$(node --version | sed -E 's/^v([0-9]+).*/\1/')
    if [ -z "$want" ] && [ "$major" -lt "$min" ]; then
        echo "system node $(node --version) is older than $min; using one from npm" >&2
        want=20
    fi
    if [ -n "$want" ]; then
        case "$(uname -m)" in
            x86_64) arch=x64 ;;
            aarch64 | arm64) arch=arm64 ;;
            *) arch=$(uname -m) ;;
        esac
        node_dir="$target_dir/node/$want"
        node_bin="$node_dir/node_modules/node-linux-$arch/bin/node"
        if [ ! -x "$node_bin" ]; then
            npm install --no-audit --no-fund --prefix "$node_dir" "node-linux-$arch@$want" >&2
        fi
        PATH="$(dirname "$node_bin"):$PATH"
    fi
    echo "node $(node --version), npm $(npm --version)" >&2
    if [ -f tests/js/package-lock.json ]; then
        (cd tests/js && npm ci --no-audit --no-fund)
    else
        (cd tests/js && npm install --no-audit --no-fund)
    fi
}
