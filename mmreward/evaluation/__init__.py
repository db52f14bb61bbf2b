"""Preference evaluation: scorers (reward models, judges, CLIP: `scorers`), a resumable data-parallel
runner (`runner`), metrics and reports (`report`). Scripts: eval/preference.py, eval/compare.py,
eval/master_key.py. The package imports nothing itself, so a script's `--help` stays fast."""
