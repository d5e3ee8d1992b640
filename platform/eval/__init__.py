"""What a run produced: held-out eval in the train loop, `palm generate`, `palm eval`
(lm-evaluation-harness), and PaLM's memorization test (§8).

Uses the model's decode and the train step's mesh; the model package never imports this.
"""
