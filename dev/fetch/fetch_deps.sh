#!/bin/sh
# Gets the build's two libraries when the system has no -dev package for them:
# utf8proc (the tokenizer's Unicode tables; `make`) and doctest (the test
# framework; `make test`) and libmicrohttpd (./serve's HTTP server: the header
# from libmicrohttpd-dev, the shared library from libmicrohttpd12, linked with
# an rpath to build/deps/lib; it needs the system's libgnutls30). Downloads the Debian package with `apt-get download`
# (no root needed) into build/deps/, checks its size and sha256 against
# dev/fetch/DEPS_SHA256SUMS, unpacks it with `dpkg-deb -x` and keeps what the
# build uses:
#   build/deps/include/utf8proc.h, build/deps/lib/libutf8proc.a   (linked statically)
#   build/deps/include/doctest/doctest.h
#   build/deps/include/microhttpd.h, build/deps/lib/libmicrohttpd.so.12
# Run by `make` (dev/fetch/deps.mk) as: sh dev/fetch/fetch_deps.sh utf8proc|doctest|microhttpd|microhttpd-lib
# Safe to re-run: a package already unpacked is not fetched again.
set -eu
deps=build/deps
sums=dev/fetch/DEPS_SHA256SUMS

case ${1:-} in
utf8proc) package=libutf8proc-dev; keep="usr/include/utf8proc.h:include/utf8proc.h usr/lib/*/libutf8proc.a:lib/libutf8proc.a" ;;
doctest)  package=doctest-dev;     keep="usr/include/doctest/doctest.h:include/doctest/doctest.h" ;;
microhttpd) package=libmicrohttpd-dev; keep="usr/include/microhttpd.h:include/microhttpd.h" ;;
microhttpd-lib) package=libmicrohttpd12; keep="usr/lib/*/libmicrohttpd.so.12:lib/libmicrohttpd.so.12" ;;
*) echo "usage: sh dev/fetch/fetch_deps.sh utf8proc|doctest|microhttpd|microhttpd-lib" >&2; exit 2 ;;
esac

by_hand() {
    echo "deps: $1" >&2
    echo "deps: install $package yourself (Debian/Ubuntu: apt-get install $package)," >&2
    echo "      or point the build at it: make CPPFLAGS=-I/its/include LDFLAGS=-L/its/lib" >&2
    exit 1
}

name=$(awk -v p="$package" '$3 ~ "^" p "_" {print $3}' "$sums")
why="is not installed"
[ "${LOCAL_DEPS:-0}" = 1 ] && why="is wanted as a local copy (LOCAL_DEPS=1)"
deb=$deps/$name
stamp=$deps/.$package.unpacked
[ -f "$stamp" ] && [ "$stamp" -nt "$sums" ] && exit 0

command -v dpkg-deb >/dev/null 2>&1 || by_hand "dpkg-deb is not installed (it comes with dpkg, on Debian and Ubuntu)"
command -v apt-get >/dev/null 2>&1 || by_hand "apt-get is not installed"
mkdir -p "$deps"
if [ ! -f "$deb" ]; then
    version=$(echo "$name" | cut -d_ -f2)
    echo "deps: $package $why: apt-get download $package=$version, sha256 checked, unpacked under $deps/ (no root needed)"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -q "$package=$version" >/dev/null 2>&1) ||
        { rm -rf "$tmp"; by_hand "apt-get download $package=$version failed (no network, or apt does not offer that version)"; }
    mv "$tmp"/*.deb "$deb.tmp" && mv "$deb.tmp" "$deb"
    rm -rf "$tmp"
fi
expected_sha=$(awk -v n="$name" '$3 == n {print $1}' "$sums")
expected_size=$(awk -v n="$name" '$3 == n {print $2}' "$sums")
size=$(wc -c <"$deb" | tr -d ' ')
sha=$(sha256sum "$deb" | awk '{print $1}')
if [ "$size" != "$expected_size" ] || [ "$sha" != "$expected_sha" ]; then
    rm -f "$deb"
    by_hand "$name had size $size and sha256 $sha, expected $expected_size and $expected_sha (deleted)"
fi
unpacked=$deps/unpacked-$package
rm -rf "$unpacked"
dpkg-deb -x "$deb" "$unpacked"
for pair in $keep; do
    from=$(ls $unpacked/${pair%%:*} | head -n 1)   # the glob names the multiarch folder
    to=$deps/${pair#*:}
    mkdir -p "$(dirname "$to")"
    cp "$from" "$to.tmp" && mv "$to.tmp" "$to"
done
rm -rf "$unpacked"
touch "$stamp"
