# shellcheck shell=bash
#
# scripts/lib/pg.sh — a private, throwaway PostgreSQL cluster for scripts/dev and
# scripts/test. Source it; do not execute it.
#
#   source scripts/lib/pg.sh
#   trap pg_cluster_stop EXIT
#   trap 'exit 130' INT
#   trap 'exit 143' TERM
#   pg_cluster_start test                  # exports PGHOST PGPORT PGUSER CABLE_PG_ADMIN_URL
#   DATABASE_URL=$(pg_create_database cable_dev)
#
# Install the traps exactly like that: INT/TERM only `exit`, which runs the EXIT trap, so
# the cluster is stopped once, whatever ended the script.
#
# What pg_cluster_start does:
#   * finds initdb/pg_ctl/postgres (highest /usr/lib/postgresql/*/bin, else PATH) and, if
#     they are missing, installs the Debian `postgresql` package. That package may create
#     and start its own "main" cluster on 5432; we never use or touch it.
#   * creates the cluster in target/pg/<name> (data/, server.log, and the unix socket).
#     initdb refuses to run as root, so as root the cluster belongs to the `postgres`
#     system user (created if missing) and initdb/pg_ctl run as that user via runuser.
#     If `postgres` cannot reach target/pg/<name> (e.g. the checkout lives under a 0700
#     /root), the cluster goes to a mktemp directory under /tmp instead and
#     target/pg/<name> becomes a symlink to it; pg_cluster_stop removes both.
#     If target/pg/<name> is in use by another live script, target/pg/<name>-<pid> is used.
#     A leftover from a run that was killed (SIGKILL) is stopped and removed first.
#   * listens on 127.0.0.1 only, on the first free port from 54320 (PG_PORT_BASE), with
#     trust auth, fsync=off and max_connections=200; retries on the next port if another
#     process grabbed the port between the probe and the bind.
#   * waits (polling pg_isready every 0.1 s, up to PG_START_TIMEOUT seconds, default 60)
#     and prints the server log tail if the server does not come up.
#
# Other helpers: pg_create_database NAME (prints its URL), pg_url_with_db URL NAME,
# pg_ensure_client (psql for a DATABASE_URL given from outside), pg_apt_install PKG...
# Whether to use a server given from outside (DATABASE_URL in scripts/dev,
# CABLE_PG_ADMIN_URL in scripts/test) is the caller's decision.
#
# Needs only bash, coreutils and util-linux (runuser, flock, timeout): no python, and no
# fixed sleeps.

# Repository root, from this file's location (scripts/lib/pg.sh).
PG_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

PG_PORT_BASE=${PG_PORT_BASE:-54320}
PG_START_TIMEOUT=${PG_START_TIMEOUT:-60}
PG_MAX_CONNECTIONS=${PG_MAX_CONNECTIONS:-200}

pg_log() { printf '[pg] %s\n' "$*" >&2; }
pg_die() { printf '[pg] error: %s\n' "$*" >&2; return 1; }

# True when running as root.
pg__is_root() { [ "$(id -u)" = 0 ]; }

# apt-get install the given packages, non-interactively (as root, or via sudo -n).
pg_apt_install() {
    local sudo=()
    if ! pg__is_root; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            pg_die "need to install '$*' but not root and no passwordless sudo; install it yourself (apt-get install $*)"
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        pg_die "need '$*' but apt-get is not available; install it with your package manager"
        return 1
    fi
    pg_log "installing Debian package(s): $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >&2 || return 1
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null >&2 || return 1
}

# Sets PG_BINDIR to a directory holding initdb, pg_ctl and postgres; returns 1 if none.
pg_find_bindir() {
    local d best=""
    # Highest installed major version first (sort -V: 9.6 < 10 < 15 < 16).
    while IFS= read -r d; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
            best=$d
        fi
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V)
    if [ -z "$best" ]; then
        local p
        if p=$(command -v initdb 2>/dev/null); then
            p=$(readlink -f "$p")
            d=$(dirname "$p")
            if [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
                best=$d
            fi
        fi
    fi
    [ -n "$best" ] || return 1
    PG_BINDIR=$best
    export PG_BINDIR
}

# Finds the server binaries, installing the Debian `postgresql` package if needed.
pg_ensure_server_bins() {
    if ! pg_find_bindir; then
        pg_log "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found"
        pg_apt_install postgresql || return 1
        pg_find_bindir || { pg_die "PostgreSQL installed but initdb/pg_ctl/postgres still not found under /usr/lib/postgresql/*/bin or PATH"; return 1; }
    fi
    # Client tools from the same installation come first in PATH (psql, pg_isready, ...).
    case ":$PATH:" in
        *":$PG_BINDIR:"*) ;;
        *) PATH="$PG_BINDIR:$PATH"; export PATH ;;
    esac
}

# Makes sure psql and pg_isready are available (for a DATABASE_URL given from outside).
pg_ensure_client() {
    if pg_find_bindir; then
        case ":$PATH:" in
            *":$PG_BINDIR:"*) ;;
            *) PATH="$PG_BINDIR:$PATH"; export PATH ;;
        esac
    fi
    if ! command -v psql >/dev/null 2>&1; then
        pg_apt_install postgresql-client || return 1
        command -v psql >/dev/null 2>&1 || { pg_die "postgresql-client installed but psql not found"; return 1; }
    fi
}

# Runs a command as the cluster owner: `postgres` when we are root, else ourselves.
# The working directory is / so that `postgres` never needs access to ours.
pg__as_owner() {
    if pg__is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

# As root: make sure the `postgres` system user exists.
pg__ensure_postgres_user() {
    pg__is_root || return 0
    id -u postgres >/dev/null 2>&1 && return 0
    pg_log "creating system user 'postgres'"
    useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
        --shell /bin/sh postgres || { pg_die "could not create the 'postgres' user"; return 1; }
}

# Is something listening on 127.0.0.1:$1 ?
pg__port_in_use() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Prints the first port >= $1 that nothing on 127.0.0.1 listens on.
pg__free_port() {
    local port=$1 last=$(( $1 + 500 ))
    while [ "$port" -le "$last" ]; do
        if ! pg__port_in_use "$port"; then
            echo "$port"
            return 0
        fi
        port=$((port + 1))
    done
    pg_die "no free TCP port in $1..$last on 127.0.0.1"
}

# Stops a cluster (if its postmaster runs) and deletes its directory; $1 = cluster dir.
pg__destroy_dir() {
    local dir=$1 real
    [ -n "$dir" ] || return 0
    real=$(readlink -f "$dir" 2>/dev/null || echo "$dir")
    if [ -f "$real/data/postmaster.pid" ]; then
        pg__as_owner "$PG_BINDIR/pg_ctl" stop -D "$real/data" -m immediate -s >/dev/null 2>&1 || true
        # pg_ctl could not do it (e.g. binaries gone): kill the postmaster ourselves.
        if [ -f "$real/data/postmaster.pid" ]; then
            local pid
            pid=$(head -n1 "$real/data/postmaster.pid" 2>/dev/null || true)
            case "$pid" in
                ''|*[!0-9]*) ;;
                *) kill -QUIT "$pid" 2>/dev/null || true ;;
            esac
        fi
    fi
    rm -rf -- "$real"
    [ -L "$dir" ] && rm -f -- "$dir"
    return 0
}

# Is the script that created cluster dir $1 still running (and not us)?
pg__dir_in_use() {
    local owner
    owner=$(cat "$1/owner.pid" 2>/dev/null || true)
    case "$owner" in
        ''|*[!0-9]*) return 1 ;;
    esac
    [ "$owner" != "$$" ] && kill -0 "$owner" 2>/dev/null || return 1
    # A killed script may linger as a zombie for a moment; that does not count.
    if [ -r "/proc/$owner/stat" ]; then
        local stat
        stat=$(cat "/proc/$owner/stat" 2>/dev/null || true)
        stat=${stat##*) }
        [ "${stat%% *}" != Z ] || return 1
    fi
    return 0
}

# pg__claim_dir NAME — reserve the cluster directory for this script (pid in owner.pid)
# and set PG_CLUSTER_LINK (target/pg/NAME...) and PG_CLUSTER_DIR (the real directory).
# Serialized with flock, so concurrent scripts never take or delete each other's directory.
pg__claim_dir() {
    local name=$1 root="$PG_REPO_ROOT/target/pg" lockfd="" link dir
    mkdir -p "$root" || { pg_die "cannot create $root"; return 1; }
    if command -v flock >/dev/null 2>&1; then
        exec {lockfd}>>"$root/.lock"
        flock "$lockfd"
    fi
    for link in "$root/$name" "$root/$name-$$"; do
        if [ -e "$link" ] || [ -L "$link" ]; then
            if pg__dir_in_use "$link"; then
                pg_log "target/pg/$name is in use by a running script (pid $(cat "$link/owner.pid" 2>/dev/null)); using target/pg/$name-$$"
                continue
            fi
            pg_log "removing leftover cluster in ${link#"$PG_REPO_ROOT/"}"
            pg__destroy_dir "$link"
        fi
        break
    done

    dir=$link
    mkdir -p "$dir"
    chmod 0700 "$dir"
    if pg__is_root; then
        chown postgres:"$(id -gn postgres)" "$dir"
        if ! runuser -u postgres -- test -w "$dir" -a -x "$dir" 2>/dev/null; then
            # Some parent of the checkout is not traversable by `postgres` (say, a 0700
            # /root): put the cluster under /tmp and leave a symlink in target/pg.
            rmdir "$dir"
            dir=$(mktemp -d "/tmp/cable-gateway-pg-$name.XXXXXX") || return 1
            chown postgres:"$(id -gn postgres)" "$dir"
            chmod 0700 "$dir"
            ln -s "$dir" "$link"
            pg_log "user 'postgres' cannot reach $root; cluster lives in $dir (symlinked from ${link#"$PG_REPO_ROOT/"})"
        fi
    fi
    echo "$$" >"$dir/owner.pid"
    # From here on the directory belongs to this script: pg_cluster_stop removes it.
    PG_CLUSTER_LINK=$link
    PG_CLUSTER_DIR=$dir
    export PG_CLUSTER_LINK PG_CLUSTER_DIR
    if [ -n "$lockfd" ]; then
        exec {lockfd}>&-
    fi
}

# pg_cluster_start NAME — create, configure and start the private cluster; export
# PGHOST, PGPORT, PGUSER, CABLE_PG_ADMIN_URL, PG_CLUSTER_DIR, PG_CLUSTER_PORT.
pg_cluster_start() {
    local name=${1:?pg_cluster_start: cluster name required}
    # runuser and useradd live in /usr/sbin, which a CI PATH may lack.
    command -v runuser >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin"
    pg_ensure_server_bins || return 1
    pg__ensure_postgres_user || return 1

    pg__claim_dir "$name" || return 1
    local dir=$PG_CLUSTER_DIR

    pg_log "initdb $dir/data ($("$PG_BINDIR/postgres" --version))"
    if ! pg__as_owner "$PG_BINDIR/initdb" -D "$dir/data" -U postgres -A trust \
            -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        pg_die "initdb failed (log above)"
        return 1
    fi

    # The unix socket lives in the cluster dir unless that path is too long for a socket
    # address (108 bytes); then we go TCP-only, which is all we use anyway.
    local sockdir=$dir
    if [ $(( ${#dir} + 20 )) -gt 100 ]; then
        sockdir=""
    fi
    cat >>"$dir/data/postgresql.conf" <<EOF

# --- cable-gateway private throwaway cluster (scripts/lib/pg.sh) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sockdir'
max_connections = $PG_MAX_CONNECTIONS
fsync = off
synchronous_commit = off
full_page_writes = off
EOF

    local port=$PG_PORT_BASE attempt=1 logfile="$dir/server.log" before ok=0 out=""
    while [ "$attempt" -le 10 ]; do
        port=$(pg__free_port "$port") || return 1
        before=$( { wc -l <"$logfile"; } 2>/dev/null || echo 0)
        if out=$(pg__as_owner "$PG_BINDIR/pg_ctl" start -D "$dir/data" -l "$logfile" \
                -o "-p $port" -w -t "$PG_START_TIMEOUT" -s 2>&1); then
            ok=1
            break
        fi
        if tail -n +"$((before + 1))" "$logfile" 2>/dev/null \
                | grep -qE 'could not bind|Address already in use|could not create any TCP/IP sockets'; then
            pg_log "port $port was taken meanwhile; trying the next one"
            port=$((port + 1))
            attempt=$((attempt + 1))
            continue
        fi
        break
    done
    if [ "$ok" != 1 ]; then
        [ -z "$out" ] || printf '%s\n' "$out" >&2
        echo "----- $logfile (last 40 lines) -----" >&2
        tail -n 40 "$logfile" >&2 2>/dev/null || true
        echo "-----" >&2
        pg_die "PostgreSQL did not start (see log above)"
        return 1
    fi

    # pg_ctl -w saw the postmaster report "ready"; confirm it accepts TCP connections.
    local deadline=$(( SECONDS + PG_START_TIMEOUT ))
    until "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -t 1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "----- $logfile (last 40 lines) -----" >&2
            tail -n 40 "$logfile" >&2 2>/dev/null || true
            echo "-----" >&2
            pg_die "PostgreSQL on 127.0.0.1:$port not ready after ${PG_START_TIMEOUT}s (see log above)"
            return 1
        fi
        sleep 0.1
    done

    PG_CLUSTER_PORT=$port
    PGHOST=127.0.0.1
    PGPORT=$port
    PGUSER=postgres
    CABLE_PG_ADMIN_URL="postgres://postgres@127.0.0.1:$port/postgres"
    export PG_CLUSTER_PORT PGHOST PGPORT PGUSER CABLE_PG_ADMIN_URL
    unset PGPASSWORD PGDATABASE PGSERVICE PGSSLMODE
    pg_log "private PostgreSQL ready on 127.0.0.1:$port (cluster in $dir)"
}

# pg_cluster_stop — stop the cluster started by pg_cluster_start (immediate mode) and
# delete its directory. Safe to call more than once, and when nothing was started.
# Keeps the caller's exit status, so it can be the EXIT trap.
pg_cluster_stop() {
    local status=$?
    if [ -n "${PG_CLUSTER_DIR:-}" ]; then
        pg__destroy_dir "$PG_CLUSTER_DIR"
        if [ -n "${PG_CLUSTER_LINK:-}" ] && [ -L "$PG_CLUSTER_LINK" ]; then
            rm -f -- "$PG_CLUSTER_LINK"
        fi
        pg_log "private PostgreSQL stopped and removed"
        PG_CLUSTER_DIR=""
        PG_CLUSTER_LINK=""
    fi
    return "$status"
}

# pg_cluster_pause / pg_cluster_resume — stop the running private cluster (fast mode: every
# connection is cut) and start it again on the same port with the same data. For the outage
# test that scripts/test runs while nothing else uses the cluster.
pg_cluster_pause() {
    [ -n "${PG_CLUSTER_DIR:-}" ] || { pg_die "no private cluster to pause"; return 1; }
    pg__as_owner "$PG_BINDIR/pg_ctl" stop -D "$PG_CLUSTER_DIR/data" -m fast -w -s
}

pg_cluster_resume() {
    [ -n "${PG_CLUSTER_DIR:-}" ] || { pg_die "no private cluster to resume"; return 1; }
    pg__as_owner "$PG_BINDIR/pg_ctl" start -D "$PG_CLUSTER_DIR/data" -l "$PG_CLUSTER_DIR/server.log" \
        -o "-p $PG_CLUSTER_PORT" -w -t "$PG_START_TIMEOUT" -s
}

# pg_url_with_db URL DBNAME — URL with its database (path) replaced by DBNAME.
pg_url_with_db() {
    local url=$1 db=$2 query="" rest
    case "$url" in
        *\?*) query="?${url#*\?}"; url=${url%%\?*} ;;
    esac
    rest=${url#*://}
    case "$rest" in
        */*) url="${url%/*}/$db" ;;
        *) url="$url/$db" ;;
    esac
    printf '%s%s\n' "$url" "$query"
}

# pg_create_database NAME [ADMIN_URL] — create database NAME if it does not exist
# (ADMIN_URL defaults to $CABLE_PG_ADMIN_URL) and print its URL.
pg_create_database() {
    local db=${1:?pg_create_database: database name required}
    local admin=${2:-${CABLE_PG_ADMIN_URL:?pg_create_database: no admin URL (start a cluster first)}}
    command -v psql >/dev/null 2>&1 || pg_ensure_client || return 1
    psql "$admin" -X -q -v ON_ERROR_STOP=1 -v db="$db" >/dev/null <<'SQL' || { pg_die "could not create database $db"; return 1; }
SELECT format('CREATE DATABASE %I', :'db')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db')
\gexec
SQL
    pg_url_with_db "$admin" "$db"
}
