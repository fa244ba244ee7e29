#!/usr/bin/env python3
"""Predicted against measured for traces/h100/*/ (plan.json + measured.json), with and without
the calibration profile: `loom predict --plan` on the plan's cluster as is, and with its
"profile" field removed. Prints per-configuration signed errors ((pred - meas) / meas) and the
MAPEs; --json for scripts. Usage: validate_h100.py [--loom build/loom] [--dir traces/h100]"""
import argparse, copy, json, os, subprocess, sys, tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--loom", default="build/loom")
ap.add_argument("--dir", default="traces/h100")
ap.add_argument("--profile", default="traces/profiles/h100-sxm.json")
ap.add_argument("--json", action="store_true")
a = ap.parse_args()

def predict(plan):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(plan, f)
    try:
        out = subprocess.run([a.loom, "predict", "--plan", f.name, "--json"], check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    return json.loads(out)

rows = []
for name in sorted(os.listdir(a.dir)):
    d = os.path.join(a.dir, name)
    if not os.path.isfile(os.path.join(d, "measured.json")):
        continue
    plan = json.load(open(os.path.join(d, "plan.json")))
    meas = json.load(open(os.path.join(d, "measured.json")))
    with_p = copy.deepcopy(plan); with_p["cluster"]["profile"] = a.profile
    without = copy.deepcopy(plan); without["cluster"].pop("profile", None)
    pw, pn = predict(with_p), predict(without)
    ms, mm = meas["step_time_s"], meas["memory_bytes"]["peak"]
    err = lambda p, m: 100.0 * (p - m) / m
    rows.append({"name": name, "measured_step_s": ms, "measured_peak_bytes": mm,
                 "profile": {"step_s": pw["step_time_s"], "peak_bytes": pw["memory_bytes"]["peak"],
                             "step_err_pct": err(pw["step_time_s"], ms), "mem_err_pct": err(pw["memory_bytes"]["peak"], mm),
                             "time_s": pw["time_s"]},
                 "default": {"step_s": pn["step_time_s"], "peak_bytes": pn["memory_bytes"]["peak"],
                             "step_err_pct": err(pn["step_time_s"], ms), "mem_err_pct": err(pn["memory_bytes"]["peak"], mm)}})
mape = lambda k, f: sum(abs(r[k][f]) for r in rows) / len(rows)
summary = {"configs": len(rows),
           "profile": {"step_time_mape": mape("profile", "step_err_pct"), "memory_mape": mape("profile", "mem_err_pct")},
           "default": {"step_time_mape": mape("default", "step_err_pct"), "memory_mape": mape("default", "mem_err_pct")},
           "rows": rows}
if a.json:
    json.dump(summary, sys.stdout, indent=1)
    sys.exit(0)
print(f"| configuration | measured step | profile: predicted | error | default: predicted | error | measured peak | profile: error | default: error |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    p, n = r["profile"], r["default"]
    print(f"| {r['name']} | {r['measured_step_s']*1e3:.1f} ms | {p['step_s']*1e3:.1f} ms | {p['step_err_pct']:+.1f}% | "
          f"{n['step_s']*1e3:.1f} ms | {n['step_err_pct']:+.1f}% | {r['measured_peak_bytes']/2**30:.2f} GiB | "
          f"{p['mem_err_pct']:+.1f}% | {n['mem_err_pct']:+.1f}% |")
print(f"\nMAPE over {len(rows)}: profile step {summary['profile']['step_time_mape']:.1f}%, memory {summary['profile']['memory_mape']:.1f}%; "
      f"default step {summary['default']['step_time_mape']:.1f}%, memory {summary['default']['memory_mape']:.1f}%")
