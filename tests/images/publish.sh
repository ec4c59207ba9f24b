#!/usr/bin/env bash
# What `scripts/images push` promises, against the test registry (`scripts/stack up registry`:
# TLS with a CA of its own, a password), with the images `scripts/images build` made:
#
#   - both images pushed, one line each with its digest; pushed again (this time through an
#     existing `podman login` rather than REGISTRY_PASSWORD), nothing is uploaded, and it says so;
#   - a wrong password, a stopped registry and a missing image: exit code 1, one line on stderr
#     naming the registry, nothing reported as pushed, .stack/images/pushed left as it was;
#   - the password never appears in any output or in the push log.
#
# Run by scripts/test after `scripts/images build` and before `scripts/images pull`, which pulls
# what the first push pushed. Needs REGISTRY, REGISTRY_USERNAME, REGISTRY_PASSWORD and
# REGISTRY_CERT_DIR (eval "$(scripts/stack env)").
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${REGISTRY:?eval \"\$(scripts/stack env)\" with the registry up (scripts/stack up registry)}"
: "${REGISTRY_USERNAME:?}" "${REGISTRY_PASSWORD:?}" "${REGISTRY_CERT_DIR:?}"
STATE=.stack/images
host=${REGISTRY%%/*}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

ok() { echo "ok - $*"; }
not_ok() { echo "not ok - $*" >&2; failures=$((failures + 1)); }
# The password must not leak into what a user or a CI log sees.
no_secret() {
  if grep -qF -- "$REGISTRY_PASSWORD" "$@" 2>/dev/null; then not_ok "the password appears in $*"; fi
}
# Runs `scripts/images push` with the environment given, keeping stdout, stderr and the code.
push() {
  set +e
  env "$@" scripts/images push >"$work/out" 2>"$work/err"
  code=$?
  set -e
  no_secret "$work/out" "$work/err" "$STATE/push.log"
}
# A refused push: code 1, exactly one line on stderr containing $1 and the registry, nothing
# reported as pushed on stdout, the record of the last push untouched.
refused() {
  local expected=$1 what=$2 record
  record=$(cat "$STATE/pushed")
  if [[ $code != 1 ]]; then not_ok "$what: exit code $code, not 1"; fi
  if [[ $(wc -l <"$work/err") != 1 ]]; then not_ok "$what: not one line on stderr:"; cat "$work/err" >&2; fi
  if ! grep -q -- "$expected" "$work/err" || ! grep -qF -- "$host" "$work/err"; then
    not_ok "$what: stderr does not name $host and say \"$expected\": $(cat "$work/err")"
  fi
  if [[ -s $work/out ]]; then not_ok "$what: something was reported on stdout: $(cat "$work/out")"; fi
  if [[ $record != "$(cat "$STATE/pushed")" ]]; then not_ok "$what: the record of the last push changed"; fi
  ok "$what: $(cat "$work/err")"
}

# 1. The first push, with REGISTRY_PASSWORD.
start=$(date +%s.%N)
push
took=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
cat "$work/out"
if [[ $code != 0 ]]; then cat "$work/err" >&2; not_ok "the first push failed"; exit 1; fi
for service in orders expiration; do
  grep -Eq "^$service: pushed $REGISTRY/$service:[0-9a-f]+(-dirty)? and :latest, digest sha256:[0-9a-f]{64} " "$work/out" ||
    not_ok "no line for $service with its digest"
  grep -Eq "^$service=$REGISTRY/$service@sha256:[0-9a-f]{64}$" "$STATE/pushed" || not_ok "$service is not in $STATE/pushed"
done
ok "both images pushed in $took s"
cp "$STATE/pushed" "$work/pushed.first"

# 2. Again, unchanged, through an existing login (a podman auth file) instead of the variables.
podman login --authfile "$work/auth.json" --cert-dir "$REGISTRY_CERT_DIR" --username "$REGISTRY_USERNAME" \
  --password-stdin "$host" <<<"$REGISTRY_PASSWORD" >/dev/null
start=$(date +%s.%N)
push -u REGISTRY_PASSWORD REGISTRY_AUTH_FILE="$work/auth.json"
took=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
cat "$work/out"
if [[ $code != 0 ]]; then cat "$work/err" >&2; not_ok "the second push failed"; exit 1; fi
for service in orders expiration; do
  grep -q "^$service: pushed .*; uploaded nothing: the registry had every layer$" "$work/out" ||
    not_ok "the second push of $service uploaded something"
done
grep -qx "no layer uploaded: the registry had both images already" "$work/out" || not_ok "the second push does not say that nothing was uploaded"
cmp -s "$STATE/pushed" "$work/pushed.first" || not_ok "the second push gave other digests"
ok "pushed again through an existing login in $took s, nothing uploaded, same digests"

# 3. A wrong password.
push REGISTRY_PASSWORD="not-$REGISTRY_PASSWORD"
refused "refused the credentials of $REGISTRY_USERNAME" "a wrong password"

# 4. A stopped registry, with the variables and with an existing login.
scripts/stack down registry 2>/dev/null
push
refused "does not answer" "a stopped registry"
push -u REGISTRY_PASSWORD REGISTRY_AUTH_FILE="$work/auth.json"
refused "does not answer" "a stopped registry, through an existing login"
scripts/stack up registry >/dev/null 2>&1

# 5. No image to push: a container storage of its own, empty.
mkdir -p "$work/storage"
printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' "$work/storage/root" "$work/storage/run" >"$work/storage.conf"
push CONTAINERS_STORAGE_CONF="$work/storage.conf"
refused "there is no image localhost/orders:latest" "no image built"
podman --root "$work/storage/root" --runroot "$work/storage/run" system reset -f >/dev/null 2>&1 || true

if ((failures)); then
  echo "publish: $failures check(s) failed" >&2
  exit 1
fi
echo "publish: all checks passed"
