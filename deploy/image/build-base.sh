#!/usr/bin/env bash
# Build a small Debian base image with debootstrap and import it into podman:
#
#   deploy/image/build-base.sh localhost/ganserve-base:bookworm [LABEL=VALUE...]
#
# What the Dockerfile needs from its BASE_IMAGE: `python` (python-is-python3) with the
# venv module and ensurepip's wheels (python3-venv), CA certificates for pip, useradd
# (passwd, in minbase). For machines that cannot pull python:3.11-slim; needs root.
# DEBIAN_SUITE (bookworm) and DEBIAN_MIRROR (deb.debian.org) override the source.
set -euo pipefail

image=${1:?usage: build-base.sh IMAGE_NAME [LABEL=VALUE...]}
shift
labels=()
for label in "$@"; do labels+=(--change "LABEL $label"); done
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-venv,python-is-python3,ca-certificates

# Not under /tmp: a tmpfs there may be too small or mounted nodev.
work=$(mktemp -d /var/tmp/ganserve-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs

echo "debootstrap $suite (minbase + $packages) from $mirror"
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}

# Keep it small, as Debian's slim images do: no docs (copyright files stay), man
# pages, translations or apt caches, here and in whatever a derived image installs.
cat >"$root/etc/dpkg/dpkg.cfg.d/01-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
cat >"$root/etc/apt/apt.conf.d/01-slim" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
CFG
find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$root"/usr/share/{man,info,groff,lintian}/* \
  "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/*
# pip trusts the system's CA store (what update-ca-certificates maintains, as Debian's
# python3-certifi does), not the certifi copy inside pip: a build can then trust a
# TLS-intercepting proxy by providing /etc/ssl/certs/ca-certificates.crt, see
# image-test.sh.
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
# The container engine provides these per container.
rm -f "$root/etc/hostname" "$root/etc/resolv.conf"
: >"$root/etc/machine-id"

echo "podman import -> $image ($(du -sh "$root" | cut -f1) on disk)"
tar --numeric-owner -C "$root" -c . | podman import --quiet \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python"]' \
  "${labels[@]}" \
  --message "debootstrap --variant=minbase $suite + $packages" \
  - "$image" >/dev/null
