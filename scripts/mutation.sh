#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the code whose numbers users trust: bench/metrics.py,
# bench/leaderboard.py, bench/results.py and the best-epoch selection inside bench/train.py fit.
#
# Why a script and not CI: every mutant re-runs the tests that cover it, so a run takes
# minutes to tens of minutes on a small machine. Run it by hand after changing those modules
# or their tests, and compare the killed/total line with the last one quoted in reports/.
#
#   bash scripts/mutation.sh             # the working tree (tracked + untracked, not ignored)
#   bash scripts/mutation.sh HEAD~3      # a committed revision instead (e.g. "before")
#   MUTATION_JOBS=2 MUTATION_KEEP=1 bash scripts/mutation.sh
#   MUTATION_WORK=/tmp/mut-after bash scripts/mutation.sh   # a fixed scratch dir (kept)
#   bash scripts/mutation.sh --score /tmp/mut-after         # the score so far of a kept dir
#                                                           # (while it runs: the partial score)
#
# It works in a scratch copy (mutmut writes a mutants/ tree beside the code and a
# [tool.mutmut] section into pyproject.toml), so the checkout is never touched. The mutmut
# configuration is scripts/mutation.toml; the test selection lives there too.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# killed / total over exactly the mutants a run selected (scope.txt), per function, and the
# ones not killed; mutants not run yet ("not checked") are counted apart, so a run that was
# stopped early still gives an honest partial score.
score() {
  (cd "$1" && { mutmut results --all true > results.txt 2>/dev/null || true; }
   python - <<'EOF'
import fnmatch
from collections import Counter
scope = [ln.strip() for ln in open("scope.txt") if ln.strip()]
globs = [s for s in scope if "*" in s]
exact = {s for s in scope if "*" not in s}
rows = [ln.strip().rsplit(": ", 1) for ln in open("results.txt") if ": " in ln]
rows = [(n, s) for n, s in rows if n in exact or any(fnmatch.fnmatch(n, g) for g in globs)]
by_function = {}
for name, status in rows:
    by_function.setdefault(name.split("__mutmut_")[0], Counter())[status] += 1
total = Counter(s for _, s in rows)
for func, c in sorted(by_function.items()):
    run = sum(v for k, v in c.items() if k != "not checked")
    print(f"{func:44s} killed {c['killed']:3d}/{run:3d} run  " + ", ".join(
        f"{k} {v}" for k, v in sorted(c.items()) if k != "killed"))
run = sum(v for k, v in total.items() if k != "not checked")
print(f"{'ALL':44s} killed {total['killed']:3d}/{run:3d} run "
      f"({100 * total['killed'] / max(1, run):.1f}%); "
      f"{total['not checked']} of {len(rows)} mutants not run yet")
print("statuses:", dict(total))
print("\nnot killed (mutmut show <name> in the scratch copy for the diff):")
for name, status in rows:
    if status not in ("killed", "not checked"):
        print(f"  {status:12s} {name}")
EOF
  )
}
if [[ "${1:-}" == --score ]]; then score "$2"; exit 0; fi

REV="${1:-}"
JOBS="${MUTATION_JOBS:-2}"
if [[ -n "${MUTATION_WORK:-}" ]]; then
  WORK="$MUTATION_WORK"; MUTATION_KEEP=1
  mkdir -p "$WORK"; [[ -z "$(ls -A "$WORK")" ]] || { echo "$WORK is not empty" >&2; exit 2; }
else
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/medbench-mutation.XXXXXX")"
fi
[[ -n "${MUTATION_KEEP:-}" ]] || trap 'rm -rf "$WORK"' EXIT

python -c "import mutmut" 2>/dev/null || python -m pip install --quiet "mutmut>=3.8,<4"

# the code to test: a revision, or the working tree as it is now
if [[ -n "$REV" ]]; then
  git -C "$REPO" archive "$REV" | tar -x -C "$WORK"
else
  (cd "$REPO" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -x -C "$WORK"
fi
# the config travels with this script, so a revision from before it existed is tested the same way
{ echo; cat "$REPO/scripts/mutation.toml"; } >> "$WORK/pyproject.toml"
# test files the selection names but this revision lacks are dropped (they would be errors)
python - "$WORK/pyproject.toml" <<'EOF'
import re, sys, tomllib
from pathlib import Path
path = Path(sys.argv[1])
text = path.read_text()
sel = tomllib.loads(text)["tool"]["mutmut"]["pytest_add_cli_args_test_selection"]
def present(t: str) -> bool:
    f = path.parent / t.split("::")[0]
    return f.is_file() and ("::" not in t or f"def {t.split('::')[1]}(" in f.read_text())
missing = [t for t in sel if not present(t)]
for t in missing:
    text = re.sub(r'\s*"' + re.escape(t) + r'",', "", text)
    print(f"mutation.sh: {t} not in this revision, left out", file=sys.stderr)
path.write_text(text)
EOF

cd "$WORK"
# Real-data tests run only if MEDMNIST_DATA is set (the copy has no ../shared/medmnist beside
# it); without it every mutant is judged by the synthetic tests alone, which is the point:
# those must catch the bugs on any machine.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1
start=$(date +%s)

# 1) the functions that make the numbers: official metrics, the bootstrap CI, the board's CI,
#    comparison and verdict, the atomic writer. MUTATION_SCOPE=modules mutates the three
#    modules whole (report, formatting and loading code too: hours on a small machine).
if [[ "${MUTATION_SCOPE:-core}" == modules ]]; then
  SCOPE=("bench.metrics.*" "bench.leaderboard.*" "bench.results.*")
else
  SCOPE=("bench.metrics.x_auc_score__*" "bench.metrics.x_acc_score__*"
         "bench.metrics.x__mean__*" "bench.metrics.x_evaluate__*"
         "bench.metrics.x__rank_auc__*" "bench.metrics.x__count_auc__*"  # _count_auc: since bbba5b9
         "bench.metrics.x__replicate_metrics__*"
         "bench.metrics.x_bootstrap_ci__*"
         "bench.leaderboard.x_verdict__*" "bench.leaderboard.x__ci__*"
         "bench.leaderboard.x__compare__*"
         "bench.results.x_atomic_write__*" "bench.results.x__umask__*")
fi
printf '%s\n' "${SCOPE[@]}" > scope.txt
mutmut run --max-children "$JOBS" "${SCOPE[@]}" > run1.log 2>&1 || true
tail -n 2 run1.log
echo "step 1 (generation, stats, core mutants) done after $(($(date +%s) - start)) s"

# 2) train.fit: only the mutants that change the best-epoch selection (the lines naming
#    best_auc / best_epoch / best_state, or the load of the kept weights). The rest of fit is
#    training mechanics that other tests cover; mutating all of it would cost an hour here.
mapfile -t FIT < <(python - <<'EOF'
import ast
from pathlib import Path
src = Path("mutants/bench/train.py").read_text()
funcs = {n.name: ast.get_source_segment(src, n) for n in ast.parse(src).body
         if isinstance(n, ast.FunctionDef) and n.name.startswith("x_fit__mutmut_")}
orig = funcs.pop("x_fit__mutmut_orig").splitlines()[1:]
for name, body in sorted(funcs.items(), key=lambda kv: int(kv[0].rsplit("_", 1)[1])):
    changed = [b for a, b in zip(orig, body.splitlines()[1:]) if a != b]
    if any(k in line for line in changed for k in ("best_", "load_state_dict(")):
        print("bench.train." + name)
EOF
)
echo "train.fit: ${#FIT[@]} mutants touch the best-epoch selection"
printf '%s\n' "${FIT[@]}" >> scope.txt
if ((${#FIT[@]})); then
  mutmut run --max-children "$JOBS" "${FIT[@]}" > run2.log 2>&1 || true
  tail -n 2 run2.log
fi
end=$(date +%s)

# 3) the score: killed / total over exactly the mutants run above
score "$WORK"
echo "time: $((end - start)) s with $JOBS workers ($(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg))"
[[ -z "${MUTATION_KEEP:-}" ]] || echo "scratch copy kept: $WORK (mutmut show <name> there)"
