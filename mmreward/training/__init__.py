"""Reward-model training: settings (`config`), deterministic data schedule (`schedule`), sharding modes
(`distributed`) and the accelerate trainer loop (`trainer`)."""
