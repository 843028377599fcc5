# shellcheck shell=bash
#
# scripts/lib/js.sh — what the Node-driven stages need, installed when missing: Node (>= 18)
# with the packages of tests/js, a real Rails backend (Debian's ruby-actioncable with both
# adapters), redis-server and Chromium. Sourced after scripts/lib/pg.sh (pg_apt_install).
#
#   js_ensure_redis                 redis-server on PATH
#   js_ensure_rails                 ruby with action_cable, active_record, pg, redis
#   js_ensure_chromium              chromium on PATH
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
