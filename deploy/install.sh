#!/usr/bin/env bash
# Install clawweb on a Debian/Ubuntu GPU host: user, virtualenv under /opt, env file, systemd units, nginx site.
# Idempotent: run it again after `git pull` to update. See deploy/README.md.
#
#   sudo deploy/install.sh                     install or update
#   deploy/install.sh --dry-run [--root DIR]   print every action, change nothing
#   deploy/install.sh --render FILE            print FILE with the @PLACEHOLDERS@ filled in (used by the tests)
#
# Settings (environment): SERVER_NAME (_), HTTPS_PORT (443), HTTP_PORT (80), CERT, CERT_KEY, MAX_ACTIVE (4),
# STREAM_TIMEOUT (600s), CONN_PER_ADDRESS (100), LOGINS_PER_MINUTE (10), ANSWERS_PER_MINUTE (120) (nginx's
# per-address limits, explained in nginx/clawweb.conf), MAX_IMPORT_BYTES (67108864: nginx's limit for
# /api/import; keep it equal to CLAWWEB_MAX_IMPORT_BYTES), ACCESS_LOG (nginx's), and the paths below.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=""
DRY_RUN=0
: "${CLAWWEB_USER:=clawweb}"
: "${PREFIX:=/opt/clawweb}"
: "${APP_DIR:=$PREFIX/app}"
: "${VENV:=$PREFIX/venv}"
: "${DATA_DIR:=/var/lib/clawweb}"
: "${ENV_FILE:=/etc/clawweb/clawweb.env}"
: "${BIND:=127.0.0.1:8080}"
: "${SERVER_NAME:=_}"
: "${HTTPS_PORT:=443}"
: "${HTTP_PORT:=80}"
: "${CERT:=/etc/ssl/certs/ssl-cert-snakeoil.pem}"
: "${CERT_KEY:=/etc/ssl/private/ssl-cert-snakeoil.key}"
: "${MAX_ACTIVE:=4}"
: "${MAX_BODY:=1m}"
: "${MAX_IMPORT_BYTES:=67108864}"
: "${ACCESS_LOG:=/var/log/nginx/access.log}"
: "${STREAM_TIMEOUT:=600s}"
: "${CONN_PER_ADDRESS:=100}"
: "${LOGINS_PER_MINUTE:=10}"
: "${ANSWERS_PER_MINUTE:=120}"
: "${STATIC_ROOT:=$APP_DIR/static}"
HTTPS_PORT_SUFFIX=$([ "$HTTPS_PORT" = 443 ] && echo "" || echo ":$HTTPS_PORT")
# The names nginx serves are the Host names the app accepts (CLAWWEB_ALLOWED_HOSTS: the DNS rebinding guard);
# "_" is nginx's catch-all, no name.
ALLOWED_HOSTS=$(echo "$SERVER_NAME" | tr -s ' ' '\n' | grep -v '^_$' | paste -sd, - || true)

render() {  # fill the @NAME@ placeholders of a deploy template
    sed -e "s|@UPSTREAM@|$BIND|g; s|@BIND@|$BIND|g; s|@SERVER_NAME@|$SERVER_NAME|g" \
        -e "s|@HTTPS_PORT@|$HTTPS_PORT|g; s|@HTTP_PORT@|$HTTP_PORT|g; s|@HTTPS_PORT_SUFFIX@|$HTTPS_PORT_SUFFIX|g" \
        -e "s|@CERT@|$CERT|g; s|@CERT_KEY@|$CERT_KEY|g; s|@MAX_BODY@|$MAX_BODY|g" \
        -e "s|@MAX_IMPORT_BYTES@|$MAX_IMPORT_BYTES|g; s|@ACCESS_LOG@|$ACCESS_LOG|g" \
        -e "s|@STREAM_TIMEOUT@|$STREAM_TIMEOUT|g; s|@STATIC_ROOT@|$STATIC_ROOT|g; s|@APP_DIR@|$APP_DIR|g" \
        -e "s|@VENV@|$VENV|g; s|@USER@|$CLAWWEB_USER|g; s|@ENV_FILE@|$ENV_FILE|g; s|@DATA_DIR@|$DATA_DIR|g" \
        -e "s|@MAX_ACTIVE@|$MAX_ACTIVE|g; s|@CONN_PER_ADDRESS@|$CONN_PER_ADDRESS|g" \
        -e "s|@LOGINS_PER_MINUTE@|$LOGINS_PER_MINUTE|g; s|@ANSWERS_PER_MINUTE@|$ANSWERS_PER_MINUTE|g" "$1"
}

run() {  # every change goes through here, so --dry-run can show it
    echo "+ $*"
    [ "$DRY_RUN" = 1 ] || "$@"
}

install_file() {  # install_file TEMPLATE DEST MODE: render and install when the content changed
    local rendered
    rendered=$(mktemp)
    render "$1" >"$rendered"
    if [ -f "$ROOT$2" ] && cmp -s "$rendered" "$ROOT$2"; then
        echo "= $2 unchanged"
    else
        echo "+ install -D -m $3 <rendered ${1#"$SRC"/}> $ROOT$2"
        [ "$DRY_RUN" = 1 ] || install -D -m "$3" "$rendered" "$ROOT$2"
    fi
    rm -f "$rendered"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --root) ROOT=$2; shift ;;
        --render) render "$SRC/deploy/$2"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "run as root (or with --dry-run)" >&2
    exit 1
fi

# 1. A system user with no shell and no home to speak of.
if ! id "$CLAWWEB_USER" >/dev/null 2>&1; then
    run useradd --system --home-dir "$DATA_DIR" --shell /usr/sbin/nologin "$CLAWWEB_USER"
fi

# 2. The code and its virtualenv under /opt (requirements are pinned).
run mkdir -p "$ROOT$APP_DIR" "$ROOT$DATA_DIR"
run cp -r "$SRC/clawweb" "$SRC/templates" "$SRC/static" "$SRC/deploy" "$SRC/wsgi.py" "$SRC/gunicorn.conf.py" \
    "$SRC/requirements.txt" "$ROOT$APP_DIR/"
[ -x "$ROOT$VENV/bin/python" ] || run python3 -m venv "$ROOT$VENV"
run "$ROOT$VENV/bin/pip" install --quiet -r "$ROOT$APP_DIR/requirements.txt"
run chown -R "$CLAWWEB_USER:$CLAWWEB_USER" "$ROOT$DATA_DIR"
# The database holds password hashes, the key file signs sessions: the service's user's alone.
run chmod 0700 "$ROOT$DATA_DIR"
# The `clawweb` command (doctor, warmup, users, keys) for operators, with the service's settings (umask 077).
install_file "$SRC/deploy/bin/clawweb" /usr/local/bin/clawweb 0755

# 3. The settings file: written once, never overwritten (it is the operator's).
if [ ! -f "$ROOT$ENV_FILE" ]; then
    env_tmp=$(mktemp)
    cat >"$env_tmp" <<ENV
# clawweb settings: see $APP_DIR/README.md (Configuration). Reload with: systemctl reload clawweb
CLAWWEB_OLLAMA_URL=http://127.0.0.1:11434
CLAWWEB_DEFAULT_MODEL=qwen3:32b
CLAWWEB_BIND=$BIND
CLAWWEB_DB=$DATA_DIR/clawweb.db
CLAWWEB_TRUSTED_PROXIES=1
# Host names this gateway serves (others get a 403); loopback names always work. See README, Accounts and security.
$([ -n "$ALLOWED_HOSTS" ] && echo "CLAWWEB_ALLOWED_HOSTS=$ALLOWED_HOSTS" || echo "# CLAWWEB_ALLOWED_HOSTS=chat.example.com")
# Accounts: add users with 'clawweb users add NAME', keys for programs with 'clawweb keys create NAME'.
CLAWWEB_AUTH=required
CLAWWEB_SECRET_KEY_FILE=$DATA_DIR/secret_key
CLAWWEB_MAX_ACTIVE=$MAX_ACTIVE
# Workers: one per core once CLAWWEB_REDIS_URL is set, one without (the unit's CLAWWEB_WORKERS=auto).
# CLAWWEB_REDIS_URL=redis://127.0.0.1:6379/0
# Several gateway hosts share one PostgreSQL (never a SQLite file): see README, "From one host to several".
# CLAWWEB_DATABASE_URL=postgresql://clawweb:PASSWORD@db.example.internal:5432/clawweb
# CLAWWEB_DB_POOL_SIZE=8
ENV
    echo "+ install -D -m 0640 <new settings file> $ROOT$ENV_FILE"
    [ "$DRY_RUN" = 1 ] || install -D -m 0640 "$env_tmp" "$ROOT$ENV_FILE"
    rm -f "$env_tmp"
fi

# 4. systemd units (the daily backup's timer too), and Ollama's drop-in matched to CLAWWEB_MAX_ACTIVE.
for unit in clawweb.service clawweb.socket clawweb-warmup.service clawweb-backup.service clawweb-backup.timer; do
    install_file "$SRC/deploy/systemd/$unit" "/etc/systemd/system/$unit" 0644
done
install_file "$SRC/deploy/systemd/ollama.service.d/clawweb.conf" /etc/systemd/system/ollama.service.d/clawweb.conf 0644

# 5. The nginx site.
install_file "$SRC/deploy/nginx/clawweb.conf" /etc/nginx/sites-available/clawweb.conf 0644
[ -L "$ROOT/etc/nginx/sites-enabled/clawweb.conf" ] ||
    run ln -s /etc/nginx/sites-available/clawweb.conf "$ROOT/etc/nginx/sites-enabled/clawweb.conf"

# 6. Start or restart what changed (skipped under --root: that is not a live system).
if [ -z "$ROOT" ]; then
    run systemctl daemon-reload
    run systemctl enable --now clawweb.socket clawweb.service clawweb-warmup.service clawweb-backup.timer
    run systemctl reload-or-restart clawweb.service
    run nginx -t
    run systemctl reload nginx
fi
host=$([ "$SERVER_NAME" = _ ] && echo localhost || echo "$SERVER_NAME")
echo "done: https://$host$HTTPS_PORT_SUFFIX/ (check with: clawweb doctor --url https://localhost$HTTPS_PORT_SUFFIX)"
