"""Safety-tuning SmolLM2-135M-Instruct so that it refuses: the recipe, its data, its adapters; README.md."""
