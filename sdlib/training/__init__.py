"""Fine-tuning: SFT, the PPO loop, rewards, RL and the TRL baseline."""
