"""Fine-tuning: LoRA adapters that teach a code model to fill in the middle of a repository.

``data`` reads a folder into training and held-out files, ``fim`` draws examples from
them, ``train`` runs the peft training loop with checkpoints, ``evaluate`` scores
single-line infilling on held-out files, ``cli`` is ``jupyter-ds finetune`` and ``job``
the admin REST job that runs it in a child process.
"""
