#!/usr/bin/env bash
# Throwaway Dovecot IMAP server on 127.0.0.1 for integration tests.
#
#   dovecot-test-server.sh start DIR PORT [ALICE_PASSWORD] [BOB_PASSWORD]
#   dovecot-test-server.sh stop DIR
#
# start: writes DIR/dovecot.conf and DIR/users (alice, bob; plain passwords,
#        defaults "alicepw" / "bobpw"), keeps Maildirs in DIR/mail/<user>/Maildir,
#        starts dovecot, waits until PORT answers with an IMAP greeting and
#        prints the master pid file path on stdout (everything else: stderr).
# stop:  stops the instance started from DIR and waits for it to exit.
#
# Environment (optional):
#   IMAPS_PORT=N     also listen for implicit TLS on N (self-signed cert in DIR/ssl)
#   MAIL_USER=name   when run as root: system user owning the Maildirs (default: mail)
#   START_TIMEOUT=s  seconds to wait for the greeting (default: 15)
#
# Needs: apt-get install -y dovecot-imapd (and openssl for IMAPS_PORT).
# Several instances may run at once: give each its own DIR and ports.
set -euo pipefail

die() { echo "dovecot-test-server: $*" >&2; exit 1; }

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# An IMAP greeting ("* OK ...") on 127.0.0.1:$1?
greets() (
    line=""
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    IFS= read -r -t 2 line <&3 || true
    [[ $line == "* OK"* ]]
)

# Process $1 exists and is not a zombie (kill -0 alone succeeds on zombies).
# (maildesk copy: falls back to /proc where procps is not installed.)
alive() {
    local st
    if command -v ps >/dev/null; then
        st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    else
        st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
        st=${st##*) }
    fi
    [[ $st != Z* ]]
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Can user $1 reach (search) directory $2?
user_can_enter() {
    if [[ $(id -u) -ne 0 ]]; then
        [[ -x $2 ]]
    else
        setpriv --reuid="$1" --regid="$(id -g "$1")" --clear-groups test -x "$2" 2>/dev/null
    fi
}

cmd_start() {
    [[ $# -ge 2 ]] || usage
    local dir port alice_pw bob_pw imaps_port
    dir=$(realpath -m -- "$1")
    port=$2
    alice_pw=${3:-alicepw}
    bob_pw=${4:-bobpw}
    imaps_port=${IMAPS_PORT:-}
    [[ $port =~ ^[0-9]+$ ]] || die "PORT must be a number: $port"
    [[ -z $imaps_port || $imaps_port =~ ^[0-9]+$ ]] || die "IMAPS_PORT must be a number"
    [[ $alice_pw$bob_pw != *[:$'\n']* ]] || die "passwords must not contain ':' or newlines"
    command -v dovecot >/dev/null || die "dovecot not found: apt-get install -y dovecot-imapd"

    port_busy "$port" && die "127.0.0.1:$port is already in use"
    [[ -z $imaps_port ]] || ! port_busy "$imaps_port" || die "127.0.0.1:$imaps_port is already in use"
    mkdir -p -- "$dir"
    if [[ -f $dir/instance.env ]]; then
        local old_base
        old_base=$(sed -n 's/^BASE_DIR=//p' "$dir/instance.env")
        if [[ -f $old_base/master.pid ]] && alive "$(cat "$old_base/master.pid")"; then
            die "an instance from $dir is already running (stop it first)"
        fi
    fi

    # Who owns the mail, and who runs the helper processes.
    local mail_user internal_user internal_group login_user uid gid
    if [[ $(id -u) -eq 0 ]]; then
        mail_user=${MAIL_USER:-mail}          # Dovecot refuses uid 0 for mail access
        internal_user=root                    # auth can read DIR/users wherever DIR is
        internal_group=dovecot
        login_user=dovenull                   # imap-login refuses to run as root
    else
        mail_user=$(id -un)                   # rootless: everything runs as the caller
        internal_user=$mail_user
        internal_group=$(id -gn)
        login_user=$mail_user
    fi
    uid=$(id -u "$mail_user") || die "no such user: $mail_user"
    gid=$(id -g "$mail_user")
    getent passwd "$login_user" >/dev/null || die "no such user: $login_user (is dovecot-core installed?)"

    # Unix sockets live in base_dir; their paths must stay under ~108 bytes.
    local base_dir="$dir/run" extra_dirs=""
    if (( ${#base_dir} > 70 )); then
        base_dir=$(mktemp -d /tmp/dovecot-run.XXXXXX)
        chmod 0755 "$base_dir"
        extra_dirs+=" $base_dir"
    fi
    # The mail user must be able to reach the Maildirs (as root, DIR may sit
    # under a 0700 directory such as pytest's /tmp/pytest-of-root).
    local mail_root="$dir/mail"
    mkdir -p -- "$mail_root"
    chmod 0755 -- "$dir" "$mail_root" 2>/dev/null || true
    if ! user_can_enter "$mail_user" "$mail_root"; then
        rmdir -- "$mail_root" 2>/dev/null || true
        mail_root=$(mktemp -d /tmp/dovecot-mail.XXXXXX)
        chmod 0755 "$mail_root"
        extra_dirs+=" $mail_root"
        ln -sfn -- "$mail_root" "$dir/mail-elsewhere"
    fi
    [[ $(id -u) -ne 0 ]] || chown "$uid:$gid" -- "$mail_root"
    rm -rf -- "$dir/run"                      # stale sockets from an earlier run
    mkdir -p -- "$base_dir" "$dir/state"

    printf 'alice:{PLAIN}%s\nbob:{PLAIN}%s\n' "$alice_pw" "$bob_pw" > "$dir/users"
    chmod 0600 "$dir/users"

    # Not root: chroot() is not permitted, so the services that chroot
    # by default must not.
    local login_chroot="" rootless=""
    if [[ $(id -u) -ne 0 ]]; then
        login_chroot="  chroot ="
        rootless="service anvil {
  chroot =
}
service imap-urlauth-login {
  chroot =
}"
    fi

    local ssl_block="ssl = no" imaps_listener=""
    if [[ -n $imaps_port ]]; then
        command -v openssl >/dev/null || die "openssl not found: apt-get install -y openssl"
        mkdir -p -- "$dir/ssl"
        if [[ ! -f $dir/ssl/cert.pem ]]; then
            openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
                -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
                -keyout "$dir/ssl/key.pem" -out "$dir/ssl/cert.pem" 2>/dev/null
        fi
        ssl_block="ssl = yes
ssl_cert = <$dir/ssl/cert.pem
ssl_key = <$dir/ssl/key.pem"
        imaps_listener="  inet_listener imaps {
    port = $imaps_port
    ssl = yes
  }"
    fi

    cat > "$dir/dovecot.conf" <<EOF
# Throwaway Dovecot instance for tests (generated by dovecot-test-server.sh).
instance_name = dovecot-test-$port
base_dir = $base_dir
state_dir = $dir/state
log_path = $dir/dovecot.log
protocols = imap
listen = 127.0.0.1
$ssl_block
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = $internal_user
default_internal_group = $internal_group
default_login_user = $login_user
first_valid_uid = $uid
first_valid_gid = $gid
passdb {
  driver = passwd-file
  args = scheme=PLAIN $dir/users
}
userdb {
  driver = static
  args = uid=$uid gid=$gid home=$mail_root/%n
}
mail_location = maildir:~/Maildir
namespace inbox {
  inbox = yes
  separator = /
}
protocol imap {
  mail_max_userip_connections = 100
}
service imap-login {
$login_chroot
  inet_listener imap {
    port = $port
  }
$imaps_listener
}
$rootless
# No anvil auth penalty: otherwise, after a failed login from 127.0.0.1,
# later logins wait 2-15 s (base_dir must not hold an old socket of this name).
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
EOF
    cat > "$dir/instance.env" <<EOF
BASE_DIR=$base_dir
EXTRA_DIRS=$extra_dirs
EOF

    : > "$dir/dovecot.log"
    # The daemon keeps the stdio it was started with: never hand it ours, or a
    # caller that captures our output (subprocess.run(capture_output=True),
    # $(...)) waits for EOF until dovecot exits.
    if ! dovecot -c "$dir/dovecot.conf" </dev/null >>"$dir/dovecot.log" 2>&1; then
        tail -n 20 "$dir/dovecot.log" >&2
        die "dovecot failed to start (config: $dir/dovecot.conf)"
    fi
    local deadline=$(( SECONDS + ${START_TIMEOUT:-15} ))
    until greets "$port" 2>/dev/null; do
        if (( SECONDS >= deadline )); then
            kill -TERM "$(cat "$base_dir/master.pid" 2>/dev/null)" 2>/dev/null || true
            tail -n 20 "$dir/dovecot.log" >&2
            die "no IMAP greeting on 127.0.0.1:$port"
        fi
        sleep 0.1
    done
    echo "$base_dir/master.pid"
}

cmd_stop() {
    [[ $# -eq 1 ]] || usage
    local dir base_dir="" extra_dirs="" pid=""
    dir=$(realpath -m -- "$1")
    if [[ ! -f $dir/instance.env ]]; then
        echo "dovecot-test-server: no instance in $dir (nothing to stop)" >&2
        return 0
    fi
    base_dir=$(sed -n 's/^BASE_DIR=//p' "$dir/instance.env")
    extra_dirs=$(sed -n 's/^EXTRA_DIRS=//p' "$dir/instance.env")
    [[ -f $base_dir/master.pid ]] && pid=$(cat "$base_dir/master.pid")
    if [[ -n $pid ]] && alive "$pid"; then
        kill -TERM "$pid"
        local i
        for (( i = 0; i < 100; i++ )); do   # up to 10 s; usually about 3 s
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            echo "dovecot-test-server: master $pid still running, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    # The mail lives in EXTRA_DIRS when DIR was out of the mail user's reach;
    # remove those (and a relocated base_dir) now. DIR itself is the caller's.
    local d
    for d in $extra_dirs; do
        if [[ $d == /tmp/dovecot-* ]]; then rm -rf -- "$d"; fi
    done
    rm -f -- "$dir/instance.env" "$dir/mail-elsewhere"
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop)  shift; cmd_stop "$@" ;;
    *)     usage ;;
esac
