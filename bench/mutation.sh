#!/bin/sh
# Mutation score of the invariant functions (mutmut, configured in pyproject.toml [tool.mutmut];
# docs/reliability.md "Mutation score" has the figures and the equivalent mutants).
# Not run in CI. One worker at nice 19 (the machine is shared); MUTMUT_CHILDREN=2 on an idle one.
# Starts from scratch (mutmut keeps results in mutants/, which would hide stale outcomes).
# Usage, from anywhere, with the venv in .venv: bench/mutation.sh
set -eu
cd "$(dirname "$0")/.."
# The functions that hold the invariants (whole modules for schedule, claim_policy and links).
set -- \
    'drip.schedule.*' \
    'drip.claim_policy.*' \
    'drip.links.*' \
    'drip.store.ledger.x_claim_due__mutmut_*' \
    'drip.store.ledger.x__pick_due__mutmut_*' \
    'drip.store.ledger.x__claim__mutmut_*' \
    'drip.store.ledger.x_record_sent__mutmut_*' \
    'drip.store.ledger.x_record_retry__mutmut_*' \
    'drip.store.ledger.x_record_failed__mutmut_*' \
    'drip.store.ledger.x_record_in_doubt__mutmut_*' \
    'drip.store.ledger.x_hold__mutmut_*' \
    'drip.delivery.x__record__mutmut_*' \
    'drip.delivery.x_retry_delay__mutmut_*' \
    'drip.transports.sendgrid.protocol.x_classify_status__mutmut_*' \
    'drip.transports.sendgrid.protocol.x_retry_after_seconds__mutmut_*' \
    'drip.transports.sendgrid.protocol.x__seconds__mutmut_*' \
    'drip.transports.sendgrid.protocol.x__until_date__mutmut_*' \
    'drip.transports.smtp.xǁSmtpTransportǁ_refused__mutmut_*' \
    'drip.transports.smtp.x__reply_text__mutmut_*' \
    'drip.importer.x_import_subscribers__mutmut_*' \
    'drip.importer.x__validate__mutmut_*'
rm -rf mutants
start=$(date +%s)
nice -n 19 .venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "$@" > mutants.log 2>&1 || {
    tail -c 3000 mutants.log; exit 1; }
echo "mutmut run: $(( $(date +%s) - start )) s (log: mutants.log)"
.venv/bin/python bench/mutation_summary.py "$@"
