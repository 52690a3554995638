"""rewardlab's infrastructure: runs and logging, the tiny world (tokenizer, model, tasks, warm start), data.

Never a method's maths: that lives in `algos/<method>.py`, one readable file per method.
"""
