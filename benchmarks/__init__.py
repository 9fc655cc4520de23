"""tailor's benchmarks: measured comparisons, side by side in one run.

    python -m benchmarks [--quick] [--out DIR] [--only SECTION[,SECTION]]

writes DIR/benchmarks.json, DIR/report.md and PNG plots beside it (DIR
defaults to benchmarks/results/). Progress goes to stderr. A section that
cannot run here (no root, a tool missing) records {"skipped": reason} and
the run goes on; one that fails records {"error": ...}. Nothing here is a
timed assertion: tests check the JSON's shape only.

The JSON's keys are a contract (tests/project/test_benchmarks.py):
  meta           date, commit, mode, host, wall time, seconds per section
  goals          [{"section", "goal", "measured", "status"}]   (goals.py)
  per_packet     rows {scenario, specialised_ns, generic_ns, floor_ns,
                 specialised_insns, generic_insns, specialised/generic,
                 specialised/floor}                              (per_packet.py)
  compile        rows {step, samples, p50_ms, p99_ms} for tailor generate,
                 tailor load, clang compile; clang/generate {p50, p99}
                                                                 (compile_time.py)
  control_plane  rows {pods, policies, full_plan_s, label_change_p99_ms,
                 policy_edit_p99_ms, new_pod_p99_ms, map_entries,
                 peak_rss_mib, ..._p50_ms}; curve [{pods, full_plan_s}]
                                                                 (control_plane.py)
  operator       rows {pods, initial_sync_s, policy_edit_to_all_agents_s, ...}
                                                                 (operator_sync.py)
  pod_start      rows {control, concurrency, cni_add_p50_ms, cni_add_p99_ms, ...}
                                                                 (pod_start.py)
  data_plane     rows {setup, path, throughput_gbps, rr_per_s};
                 ratios {path, metric, tailor/bridge, tailor/nftables}
                                                                 (data_plane.py)

Every call into tailor goes through adapters.py, so the sections survive
tailor's internals moving. clusters.py builds the manifests they measure.
"""
