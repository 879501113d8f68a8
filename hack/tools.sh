#!/usr/bin/env bash
# Builds the pinned binaries the tests need from Go modules: kube-apiserver and kubectl
# (k8s.io/kubernetes with its staging modules replaced by their published versions), etcd
# (through a wrapper main), helm, controller-gen and staticcheck. Nothing is downloaded
# prebuilt.
#
# Each binary is built once per version into a cache outside the clone
# (LBPAIR_TOOLS_CACHE, default ~/.cache/lbpair/tools/NAME-VERSION) and linked into bin/, so
# a fresh clone on the same machine reuses it.
#
# Usage: hack/tools.sh [kube-apiserver|kubectl|etcd|helm|controller-gen|staticcheck|all]...
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
CONTROLLER_TOOLS_VERSION=${CONTROLLER_TOOLS_VERSION:-v0.23.0}
STATICCHECK_VERSION=${STATICCHECK_VERSION:-v0.8.2}

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${LBPAIR_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lbpair/tools}
bin=$root/bin
mkdir -p "$cache" "$bin"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

log() { echo "tools: $*" >&2; }

# link NAME DIR: points bin/NAME at the cached DIR/NAME.
link() { ln -sfn "$2/$1" "$bin/$1"; }

# kube_wrapper DIR: a module that requires k8s.io/kubernetes with every staging module
# replaced by its published v0 version, which is how the k8s.io/kubernetes module can be
# built outside its own repository.
kube_wrapper() {
  local dir=$1 minor=v0.${KUBE_VERSION#v1.}
  mkdir -p "$dir"
  (
    cd "$dir"
    go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" >kubernetes.json
    local gomod
    gomod=$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' kubernetes.json)
    {
      echo "module lbpair.local/kubebins"
      echo
      grep '^go ' "$gomod"
      echo
      echo "require k8s.io/kubernetes $KUBE_VERSION"
      echo
      sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$minor"'#p' "$gomod"
    } >go.mod
    cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    # -e tolerates packages that cannot be loaded: tidy still exits 0 for them
    # (go build below names what is really missing). It exits non-zero only
    # when it cannot work at all (a bad go.mod, an unwritable directory).
    if ! go mod tidy -e >tidy.log 2>&1; then
      cat tidy.log >&2
      log "go mod tidy -e failed in $dir"
      exit 1
    fi
  )
}

build_kube() { # NAME
  local name=$1 out=$cache/kube-$KUBE_VERSION
  if [ ! -x "$out/$name" ]; then
    log "building $name $KUBE_VERSION (a few minutes, once)"
    local work=$cache/src/kube-$KUBE_VERSION
    [ -f "$work/go.sum" ] || kube_wrapper "$work"
    (cd "$work" && go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${KUBE_VERSION#v1.}" -o "$out/$name.tmp" "k8s.io/kubernetes/cmd/$name")
    mv "$out/$name.tmp" "$out/$name"
  fi
  link "$name" "$out"
}

build_etcd() {
  local out=$cache/etcd-$ETCD_VERSION
  if [ ! -x "$out/etcd" ]; then
    log "building etcd $ETCD_VERSION (about a minute, once)"
    local work=$cache/src/etcd-$ETCD_VERSION
    mkdir -p "$work"
    (
      cd "$work"
      cat >go.mod <<MOD
module lbpair.local/etcdbin

go 1.26
MOD
      cat >main.go <<'GO'
// Command etcd runs the etcd server from its Go module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
      go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
      go mod tidy >/dev/null
      go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" .
    )
    mv "$out/etcd.tmp" "$out/etcd"
  fi
  link etcd "$out"
}

go_install() { # NAME MODULE/PKG VERSION
  local name=$1 pkg=$2 version=$3 out=$cache/$1-$3
  if [ ! -x "$out/$name" ]; then
    log "building $name $version"
    GOBIN=$out go install -trimpath -ldflags "-s -w" "$pkg@$version"
  fi
  link "$name" "$out"
}

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(all)
for w in "${want[@]}"; do
  case $w in
    kube-apiserver | kubectl) build_kube "$w" ;;
    etcd) build_etcd ;;
    helm) go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" ;;
    controller-gen) go_install controller-gen sigs.k8s.io/controller-tools/cmd/controller-gen "$CONTROLLER_TOOLS_VERSION" ;;
    staticcheck) go_install staticcheck honnef.co/go/tools/cmd/staticcheck "$STATICCHECK_VERSION" ;;
    all) "$0" etcd kube-apiserver kubectl helm controller-gen staticcheck ;;
    *) echo "tools: unknown tool $w" >&2; exit 2 ;;
  esac
done
