"""``audiogen listen create|serve|report|power``: blind human-vs-AI listening tests (see docs/listening.md)."""

from __future__ import annotations

import argparse

ORDER = 70

DESCRIPTION = """\
Blind listening tests in the browser: can listeners tell human-made music from
generated music, and how do systems rate?

  create  EXPERIMENT.yaml --out EXP_DIR   prepare stimuli that leak nothing but the music
                                          (same loudness, length, format; opaque ids) and
                                          an answers database; prints the admin token
  serve   EXP_DIR                         run the web app (participants at /, admin at /admin)
  report  EXP_DIR                         statistics and an HTML report with plots
  power   --listeners N --clips M --accuracy P
                                          plan one: how often would the report reach
                                          each verdict with this many listeners and clips?

Designs: 2afc (which of A/B is AI-generated?), single (human or AI? + confidence 1-5),
mushra (0-100 sliders, hidden reference and low-pass anchor), mos (quality 1-5).
"""


def register(sub: argparse._SubParsersAction) -> None:
    # Long on purpose: the argparse declarations of four subcommands, one statement per option.
    p = sub.add_parser("listen", help="blind human-vs-AI listening tests: prepare, serve, analyse",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Run 'audiogen listen create|serve|report|power --help' for each step's options. "
                       "Docs: docs/listening.md (YAML schema, statistics, deployment).")
    ls = p.add_subparsers(dest="listen_command", metavar="STEP")

    c = ls.add_parser("create", help="prepare an experiment folder from EXPERIMENT.yaml",
                      description="Read EXPERIMENT.yaml (lists of human and generated files, the design, the "
                      "stimulus window and loudness), cut every file to the same window, normalise it to the "
                      "same BS.1770 loudness under a true-peak ceiling, resample to one rate and channel count, "
                      "and write 16-bit WAV files without tags under opaque random ids, so nothing but the "
                      "music tells them apart. Also writes the screening, calibration, catch and practice clips, "
                      "private/manifest.json (which id is what), the SQLite answers database and a random admin "
                      "token (printed once, kept in private/admin_token). EXP_DIR must not exist or be empty.",
                      epilog="example: audiogen listen create experiment.yaml --out runs/pilot",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("experiment", metavar="EXPERIMENT.yaml", help="experiment description (schema: docs/listening.md)")
    c.add_argument("--out", required=True, metavar="EXP_DIR", help="new experiment folder to create")
    c.add_argument("--quiet", action="store_true", help="print only the summary")
    c.set_defaults(func=run)

    s = ls.add_parser("serve", help="run the listening-test web app (FastAPI + uvicorn)",
                      description="Serve EXP_DIR: the participant pages at /, the admin page at /admin "
                      "(token from private/admin_token), audio with HTTP range support, answers committed to "
                      "SQLite (WAL) before they are acknowledged. Put it behind a TLS reverse proxy for real "
                      "participants (docs/listening.md, 'Deployment').",
                      epilog="example: audiogen listen serve runs/pilot --host 0.0.0.0 --port 8000",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("exp_dir", metavar="EXP_DIR", help="folder made by 'audiogen listen create'")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    s.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    s.add_argument("--rate", type=float, default=20.0, metavar="REQ_PER_S",
                   help="requests per second allowed per session (or per IP before a session), "
                   "token bucket (default: %(default)s)")
    s.add_argument("--burst", type=int, default=60, help="token-bucket burst size (default: %(default)s)")
    s.add_argument("--new-sessions-per-minute", type=float, default=30.0, metavar="N",
                   help="new participant sessions allowed per client IP per minute (default: %(default)s)")
    s.add_argument("--max-participants", type=int, default=None, metavar="N",
                   help="refuse new sessions once N participants have consented (default: no limit)")
    s.add_argument("--sessions-per-ip", type=int, default=50, metavar="N",
                   help="consented sessions one client IP may open while the server runs; 0: no limit "
                   "(default: %(default)s)")
    s.add_argument("--trust-proxy", type=int, nargs="?", const=1, default=0, metavar="HOPS",
                   help="behind HOPS reverse proxies of your own (default 0; the bare flag: 1): take the client "
                   "IP from X-Forwarded-For, the HOPS-th entry from the right (entries left of it are forgeable)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="server log verbosity (default: %(default)s)")
    s.set_defaults(func=run)

    r = ls.add_parser("report", help="statistics and an HTML report with plots",
                      description="Analyse EXP_DIR's answers: identification accuracy per system and overall "
                      "(exact binomial test against chance, Wilson interval), d' and bias, a TOST equivalence "
                      "test with a stated margin, a participant x item cluster bootstrap, and a mixed-effects "
                      "logistic model (random listener and clip intercepts) whose likelihood-ratio and TOST "
                      "tests give the verdict; MUSHRA and MOS means with t intervals, the BS.1534 "
                      "post-screening rule, and paired system comparisons (Wilcoxon signed-rank over "
                      "listeners, Holm-corrected). Participants who fail the headphone "
                      "screening or a catch trial, or did not finish, are excluded and listed. Writes "
                      "EXP_DIR/report/report.html (plots embedded) and report.json.",
                      epilog="example: audiogen listen report runs/pilot --margin 0.1 --json",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("exp_dir", metavar="EXP_DIR", help="folder made by 'audiogen listen create'")
    r.add_argument("--out", default=None, metavar="DIR", help="where to write the report (default: EXP_DIR/report)")
    r.add_argument("--margin", type=float, default=None,
                   help="TOST equivalence margin around 50%% accuracy (default: tost_margin from the YAML)")
    r.add_argument("--alpha", type=float, default=0.05, help="significance level (default: %(default)s)")
    r.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples (default: %(default)s)")
    r.add_argument("--include-incomplete", action="store_true",
                   help="analyse unfinished sessions too (default: only completed ones)")
    r.add_argument("--no-exclusions", action="store_true",
                   help="keep participants who failed screening/catch trials (exclusions are still listed)")
    r.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    r.set_defaults(func=run)

    w = ls.add_parser("power", help="plan a test: verdict rates of simulated experiments of a given size",
                      description="Simulate identification experiments (2AFC or single) of a planned size from the "
                      "mixed model the report fits, analyse each as 'listen report' does, and print how often it "
                      "would conclude 'above chance', 'equivalent to chance' (TOST), 'below chance' or "
                      "'inconclusive'. Set the spreads from a pilot's report (its mixed-model sd columns). "
                      "Use --accuracy 0.5 to plan an equivalence ('indistinguishable') claim.",
                      epilog="examples:\n  audiogen listen power --listeners 40 --clips 20 --accuracy 0.6\n"
                      "  audiogen listen power --listeners 60 --clips 30 --clips-per-listener 10 --accuracy 0.5 "
                      "--margin 0.1",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("--listeners", type=int, required=True, metavar="N", help="participants who finish the test")
    w.add_argument("--clips", type=int, required=True, metavar="M", help="generated clips (2AFC items) in the test")
    w.add_argument("--clips-per-listener", type=int, default=None, metavar="K",
                   help="trials per listener, a random subset of the clips (default: every clip)")
    w.add_argument("--accuracy", type=float, required=True, metavar="P",
                   help="accuracy of a typical listener on a typical clip to plan for (0.5: no ability)")
    w.add_argument("--sd-listener", type=float, default=0.5, metavar="SD",
                   help="spread of listeners' skill, sd on the log-odds scale (default: %(default)s)")
    w.add_argument("--sd-clip", type=float, default=0.5, metavar="SD",
                   help="spread of clips' difficulty, sd on the log-odds scale (default: %(default)s)")
    w.add_argument("--design", choices=["2afc", "single"], default="2afc",
                   help="2afc, or single stimulus (each clip one stimulus, human or generated) (default: %(default)s)")
    w.add_argument("--human-share", type=float, default=0.5, metavar="F",
                   help="single: the share of the stimuli that are human (default: %(default)s)")
    w.add_argument("--lean", type=float, default=0.0, metavar="L",
                   help="single: listeners' lean towards answering 'AI', log-odds (default: %(default)s)")
    w.add_argument("--margin", type=float, default=0.1, help="TOST equivalence margin around 0.5 (default: %(default)s)")
    w.add_argument("--alpha", type=float, default=0.05, help="significance level (default: %(default)s)")
    w.add_argument("--runs", type=int, default=200, help="simulated experiments (default: %(default)s)")
    w.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    w.add_argument("--json", action="store_true", help="print one JSON object")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    w.set_defaults(func=run)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def run(args: argparse.Namespace) -> int:
    if args.listen_command == "create":
        from audiogen.listening.experiment import create_experiment

        log = (lambda *_: None) if args.quiet else print
        m = create_experiment(args.experiment, args.out, log=log)
        roles = {}
        for s in m["stimuli"].values():
            roles[s["role"]] = roles.get(s["role"], 0) + 1
        print(f"created {args.out}: design {m['experiment']['design']}, {len(m['trials'])} trials, "
              f"stimuli {', '.join(f'{k} {v}' for k, v in sorted(roles.items()))}")
        for w in m["warnings"]:
            print(f"WARNING: {w}")
        print(f"admin token (also in {args.out}/private/admin_token): {m['admin_token']}")
        print(f"next: audiogen listen serve {args.out}")
        return 0
    if args.listen_command == "serve":
        from audiogen.listening.server import ServeOptions, serve

        serve(args.exp_dir, ServeOptions(host=args.host, port=args.port, rate=args.rate, burst=args.burst,
                                         new_sessions_per_minute=args.new_sessions_per_minute,
                                         max_participants=args.max_participants, trust_proxy=args.trust_proxy,
                                         sessions_per_ip=args.sessions_per_ip or None,
                                         log_level=args.log_level))
        return 0
    if args.listen_command == "report":
        import json

        from audiogen.errors import AudiogenError
        from audiogen.listening.report import make_report

        if args.bootstrap < 0 or not 0 < args.alpha < 1:
            raise AudiogenError("--bootstrap must be >= 0 and --alpha in (0, 1)")
        res = make_report(args.exp_dir, out_dir=args.out, margin=args.margin, alpha=args.alpha,
                          n_boot=args.bootstrap, include_incomplete=args.include_incomplete,
                          apply_exclusions=not args.no_exclusions)
        if args.json:
            print(json.dumps(res["summary"]))
        else:
            for line in res["text"]:
                print(line)
        return 0
    if args.listen_command == "power":
        import json

        from audiogen.listening.power import Plan, power, power_text

        plan = Plan(listeners=args.listeners, clips=args.clips, accuracy=args.accuracy,
                    clips_per_listener=args.clips_per_listener, sd_listener=args.sd_listener, sd_clip=args.sd_clip,
                    margin=args.margin, alpha=args.alpha, design=args.design, human_share=args.human_share,
                    lean=args.lean)
        res = power(plan, runs=args.runs, seed=args.seed, progress=not args.quiet)
        print(json.dumps(res) if args.json else "\n".join(power_text(res)))
        return 0
    raise AssertionError(args.listen_command)
