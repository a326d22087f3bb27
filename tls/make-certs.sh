#!/usr/bin/env bash
# Makes throwaway certificates for testing TLS locally (never for production).
#
#   bash tls/make-certs.sh OUTDIR [HOSTNAME]
#
# HOSTNAME (default localhost) goes into the broker certificates' subjectAltName,
# together with 127.0.0.1 and ::1. Everything is EC P-256, in PEM; keys are PKCS#8.
#
#   ca.pem / ca.key                 the test CA
#   broker.pem / broker.key         broker (server) certificate from ca
#   client.pem / client.key         client certificate from ca (mutual TLS)
#   other-ca.pem / other-ca.key     a second, unrelated CA ("wrong CA" cases)
#   other-broker.pem / .key         broker certificate from other-ca
#   other-client.pem / .key         client certificate from other-ca
#   wronghost.pem / wronghost.key   broker certificate from ca for wrong.example only
#   expired.pem / expired.key       broker certificate from ca, valid 2020-01-01..02
#
# Nothing generated here is committed: tests run this into a temp dir, so nothing
# expires in the repository. Needs openssl (1.1.1 or 3.x).
set -euo pipefail

OUT="${1:?usage: make-certs.sh OUTDIR [HOSTNAME]}"
HOST="${2:-localhost}"
mkdir -p "$OUT"
cd "$OUT"

DAYS=30
SAN="DNS:${HOST},DNS:localhost,IP:127.0.0.1,IP:::1"

newkey() { # $1 = name; writes $1.key
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null
}

ca() { # $1 = name, $2 = CN
    newkey "$1"
    openssl req -x509 -new -key "$1.key" -out "$1.pem" -days "$DAYS" -subj "/CN=$2" -sha256 \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" 2>/dev/null
}

# The extensions of a leaf certificate, for `openssl ca` / `openssl x509 -extfile`.
leaf_ext() { # $1 = serverAuth|clientAuth, $2 = SAN (may be empty)
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$1"
    echo "authorityKeyIdentifier=keyid"
    if [ -n "$2" ]; then echo "subjectAltName=$2"; fi
}

leaf() { # $1 = name, $2 = CA name, $3 = CN, $4 = serverAuth|clientAuth, $5 = SAN
    newkey "$1"
    openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$3" 2>/dev/null
    leaf_ext "$4" "$5" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial \
        -out "$1.pem" -days "$DAYS" -sha256 -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

# An expired leaf needs explicit dates, which only `openssl ca` takes (OpenSSL 3.0).
expired_leaf() { # $1 = name, $2 = CA name, $3 = CN, $4 = SAN
    newkey "$1"
    openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$3" 2>/dev/null
    local db; db="$(mktemp -d)"
    : > "$db/index.txt"
    echo 1000 > "$db/serial"
    leaf_ext serverAuth "$4" > "$db/ext"
    cat > "$db/ca.cnf" <<EOF
[ca]
default_ca = test
[test]
database = $db/index.txt
serial = $db/serial
new_certs_dir = $db
default_md = sha256
policy = any
copy_extensions = none
unique_subject = no
[any]
commonName = supplied
EOF
    openssl ca -batch -config "$db/ca.cnf" -cert "$2.pem" -keyfile "$2.key" \
        -in "$1.csr" -out "$1.pem" -extfile "$db/ext" -notext \
        -startdate 20200101000000Z -enddate 20200102000000Z 2>/dev/null
    rm -rf "$db" "$1.csr"
}

ca ca "mirrorproxy test CA"
ca other-ca "mirrorproxy other test CA"
leaf broker ca "$HOST" serverAuth "$SAN"
leaf client ca "mirror" clientAuth ""
leaf other-broker other-ca "$HOST" serverAuth "$SAN"
leaf other-client other-ca "mirror" clientAuth ""
leaf wronghost ca "wrong.example" serverAuth "DNS:wrong.example"
expired_leaf expired ca "$HOST" "$SAN"
rm -f ./*.srl
chmod 600 ./*.key
echo "certificates in $(pwd)"
