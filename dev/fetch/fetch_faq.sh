#!/bin/sh
# Fetches the default training data's source, the Debian FAQ in English and
# Korean (Debian packages debian-faq and debian-faq-ko 11.1, GPL-2+), with
# `apt-get download` (no root needed; where apt does not offer version 11.1,
# from the Debian archive's pool over HTTP) into data/faq/, checks each .deb's size
# and sha256 against data/faq/SHA256SUMS, and unpacks both with `dpkg-deb -x`
# into data/faq/debian-faq/ (HTML under usr/share/doc/debian/FAQ/). Nothing of
# it is committed. Run by `make`; safe to re-run.
set -eu
dir=data/faq
version=11.1
packages="debian-faq debian-faq-ko"
unpacked=$dir/debian-faq

by_hand() {
    echo "fetch: $1" >&2
    echo "fetch: to get the Debian FAQ by hand, on a machine with network download" >&2
    for p in $packages; do
        echo "         https://deb.debian.org/debian/pool/main/d/debian-faq/${p}_${version}_all.deb" >&2
    done
    echo "       into $dir/ (data/faq/SHA256SUMS lists their sizes and sha256) and run make again" >&2
    exit 1
}

command -v dpkg-deb >/dev/null 2>&1 || by_hand "dpkg-deb is not installed (it comes with dpkg, on Debian and Ubuntu)"
for p in $packages; do
    deb=$dir/${p}_${version}_all.deb
    if [ ! -f "$deb" ]; then
        tmp=$(mktemp -d)
        echo "fetch: apt-get download $p=$version ..."
        if ! (cd "$tmp" && apt-get download -q "$p=$version" >/dev/null 2>&1); then
            url=http://deb.debian.org/debian/pool/main/d/debian-faq/${p}_${version}_all.deb
            echo "fetch: apt has no $p $version; downloading $url ..."
            python3 -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" \
                "$url" "$tmp/${p}_${version}_all.deb" >/dev/null 2>&1 ||
                { rm -rf "$tmp"; by_hand "apt-get download $p=$version failed, and so did $url (no network?)"; }
        fi
        mv "$tmp/${p}_${version}_all.deb" "$deb"
        rm -rf "$tmp"
    fi
    name=$(basename "$deb")
    expected_sha=$(awk -v n="$name" '$3 == n {print $1}' $dir/SHA256SUMS)
    expected_size=$(awk -v n="$name" '$3 == n {print $2}' $dir/SHA256SUMS)
    size=$(wc -c < "$deb" | tr -d ' ')
    sha=$(sha256sum "$deb" | awk '{print $1}')
    if [ "$size" != "$expected_size" ] || [ "$sha" != "$expected_sha" ]; then
        echo "fetch: $deb has size $size and sha256 $sha," >&2
        echo "       expected size $expected_size and sha256 $expected_sha; delete it and run make again" >&2
        exit 1
    fi
    # unpack when the folder is missing or older than the package
    stamp=$unpacked/.$p.unpacked
    if [ ! -f "$stamp" ] || [ "$deb" -nt "$stamp" ]; then
        mkdir -p "$unpacked"
        dpkg-deb -x "$deb" "$unpacked"
        touch "$stamp"
    fi
done
echo "fetch: $unpacked ok (Debian FAQ $version, English and Korean, sha256 checked)"
