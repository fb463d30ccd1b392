#!/usr/bin/env bash
# Makes sure this machine can run proxdm's GPU work: a Vulkan driver (or another wgpu back end)
# must be present. On Debian 12 without one, installs Mesa's software Vulkan driver (lavapipe)
# from bookworm-backports (Mesa 25; the bookworm Mesa 22.3 lavapipe is ~5x slower for compute).
# On other systems it prints what to install. Idempotent: does nothing when a driver is there.
set -euo pipefail

say() { printf '[setup] %s\n' "$*" >&2; }

if [ "${PROXDM_SKIP_SETUP:-}" = 1 ]; then
  say "PROXDM_SKIP_SETUP=1: not checking drivers"
  exit 0
fi

# macOS has Metal, Windows has DX12: nothing to install.
case "$(uname -s)" in
  Darwin) say "macOS: wgpu uses Metal, nothing to install"; exit 0 ;;
  MINGW*|MSYS*|CYGWIN*) say "Windows: wgpu uses DX12/Vulkan, nothing to install"; exit 0 ;;
esac

have_icd() {
  # A Vulkan ICD manifest is what the loader needs to find any Vulkan driver.
  local f
  for f in /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json /usr/local/share/vulkan/icd.d/*.json; do
    [ -e "$f" ] && return 0
  done
  return 1
}

have_loader() {
  # Capture first: `grep -q` closing the pipe early would fail the pipeline under pipefail.
  local libs
  libs=$(ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null || true)
  [[ "$libs" == *libvulkan.so.1* ]]
}

mesa_version() {
  dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true
}

if have_icd && have_loader; then
  v=$(mesa_version)
  if [ -n "$v" ] && [ "${v%%.*}" -lt 24 ] 2>/dev/null && grep -q 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
    say "Mesa $v found; lavapipe from bookworm-backports (Mesa 25) is ~5x faster for compute."
    say "Upgrading it (set PROXDM_SKIP_SETUP=1 to keep the current one)."
  else
    say "Vulkan loader and driver manifest found${v:+ (mesa-vulkan-drivers $v)}: nothing to install"
    exit 0
  fi
fi

if [ -r /etc/os-release ] && grep -q '^ID=debian' /etc/os-release && grep -q 'VERSION_CODENAME=bookworm' /etc/os-release; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then SUDO="sudo"; else
      say "need root to install the software Vulkan driver; run as root or install sudo"; exit 1
    fi
  fi
  say "no usable Vulkan driver: installing Mesa's lavapipe (mesa-vulkan-drivers) from bookworm-backports"
  list=/etc/apt/sources.list.d/bookworm-backports.list
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding bookworm-backports to apt sources ($list)"
    echo 'deb http://deb.debian.org/debian bookworm-backports main' | $SUDO tee "$list" >/dev/null
  fi
  export DEBIAN_FRONTEND=noninteractive
  say "apt-get update"
  $SUDO apt-get update -qq >/dev/null
  say "apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1"
  $SUDO apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
  say "installed mesa-vulkan-drivers $(mesa_version)"
  exit 0
fi

if [ -r /etc/os-release ] && grep -qE '^ID(_LIKE)?=.*(debian|ubuntu)' /etc/os-release; then
  say "no Vulkan driver found. Install one: sudo apt-get install mesa-vulkan-drivers libvulkan1"
elif [ -r /etc/os-release ] && grep -qE '^ID(_LIKE)?=.*(fedora|rhel)' /etc/os-release; then
  say "no Vulkan driver found. Install one: sudo dnf install mesa-vulkan-drivers vulkan-loader"
elif [ -r /etc/os-release ] && grep -qE '^ID(_LIKE)?=.*arch' /etc/os-release; then
  say "no Vulkan driver found. Install one: sudo pacman -S vulkan-swrast vulkan-icd-loader"
else
  say "no Vulkan driver found. Install your GPU's Vulkan driver, or Mesa's lavapipe (software Vulkan)."
fi
exit 1
