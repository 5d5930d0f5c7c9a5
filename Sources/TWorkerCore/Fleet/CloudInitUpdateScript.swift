extension CloudInit {
    /// `/usr/local/sbin/tworker-update`: installs the release at TWORKER_RELEASE when it differs
    /// (by SHA-256) from the installed one. A host that cannot fetch a release keeps the one it
    /// has (exit 0, so tworker still starts); one without any fails (exit 1). TWORKER_PREFIX,
    /// TWORKER_BIN and TWORKER_CONFIG_DIR move it elsewhere (the tests run it in a directory).
    public static let updateScriptText = #"""
        #!/bin/bash
        # tworker-update: install the newest tworker release before tworker starts.
        # Written by `tworker host cloud-init`; run by tworker-update.service on every boot.
        set -euo pipefail

        defaults=${TWORKER_UPDATE_DEFAULTS:-/etc/default/tworker-update}
        if [ -z "${TWORKER_RELEASE:-}" ] && [ -r "$defaults" ]; then
            # shellcheck disable=SC1090
            . "$defaults"
        fi
        release=${TWORKER_RELEASE:-}
        env_name=${TWORKER_ENV:-production}
        prefix=${TWORKER_PREFIX:-/opt/tworker}
        bin=${TWORKER_BIN:-/usr/local/bin/tworker}
        config_dir=${TWORKER_CONFIG_DIR:-/etc/tworker}

        say() { echo "tworker-update: $*" >&2; }
        # Without a release there is nothing to start; with one, a failed update keeps it.
        give_up() {
            if [ -x "$bin" ] && [ -e "$prefix/current" ]; then
                say "$*; keeping the installed tworker $("$bin" --version 2>/dev/null || echo '?')"
                exit 0
            fi
            say "$*; no tworker is installed"
            exit 1
        }

        [ -n "$release" ] || { say "TWORKER_RELEASE is not set (in $defaults)"; exit 1; }
        mkdir -p "$prefix/releases"
        work=$(mktemp -d "$prefix/.update.XXXXXX")
        trap 'rm -rf "$work"' EXIT

        case "$release" in
            http://*|https://*)
                curl --fail --silent --show-error --location --retry 5 --retry-connrefused --connect-timeout 10 \
                    --max-time 600 --output "$work/release.tar.gz" "$release" || give_up "cannot fetch $release"
                ;;
            /*)
                [ -f "$release" ] || give_up "no release file at $release"
                cp "$release" "$work/release.tar.gz" || give_up "cannot read $release"
                ;;
            *)
                say "TWORKER_RELEASE must be an absolute path or an http(s) URL, got '$release'"
                exit 1
                ;;
        esac

        sum=$(sha256sum "$work/release.tar.gz" | cut -c1-64)
        if [ -x "$bin" ] && [ -e "$prefix/current" ] && [ "$(cat "$prefix/current.sha256" 2>/dev/null)" = "$sum" ]; then
            say "tworker $("$bin" --version) from $release is installed already"
            exit 0
        fi

        mkdir "$work/unpacked"
        tar -xzf "$work/release.tar.gz" -C "$work/unpacked" || give_up "$release is not a gzipped tar archive"
        tops=("$work"/unpacked/*)
        top=${tops[0]}
        [ ${#tops[@]} -eq 1 ] && [ -f "$top/bin/tworker" ] \
            || give_up "$release is not a tworker release (expected one directory holding bin/tworker)"
        chmod 0755 "$top/bin/tworker"
        if ldd "$top/bin/tworker" 2>/dev/null | grep -q 'libhiredis.*not found' && command -v apt-get >/dev/null; then
            # Debian 12 and Ubuntu 22.04 call it libhiredis0.14, Ubuntu 24.04 libhiredis1.1.0.
            say "installing hiredis"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q libhiredis1.1.0 >/dev/null 2>&1 \
                || DEBIAN_FRONTEND=noninteractive apt-get install -y -q libhiredis0.14 >/dev/null 2>&1 || true
        fi
        version=$("$top/bin/tworker" --version 2>&1) || give_up "the release's tworker does not run: $version"

        dest="$prefix/releases/$sum"
        rm -rf "$dest"
        mv "$top" "$dest"
        install -m 0755 "$dest/bin/tworker" "$bin.new"
        mv -f "$bin.new" "$bin"
        ln -sfn "$dest" "$prefix/current.new"
        mv -fT "$prefix/current.new" "$prefix/current"
        # The release's committed settings (worker.<env>.yml); worker.yml is this host's own and never touched.
        mkdir -p "$config_dir"
        if [ -f "$dest/config/worker.$env_name.yml" ]; then
            cp "$dest/config/worker.$env_name.yml" "$config_dir/worker.$env_name.yml"
        fi
        echo "$sum" > "$prefix/current.sha256"
        # The three newest releases stay, for going back by hand.
        ls -1dt "$prefix"/releases/* | tail -n +4 | while read -r old; do
            [ "$old" = "$dest" ] || rm -rf "$old"
        done
        say "installed tworker $version from $release"

        """#
}
