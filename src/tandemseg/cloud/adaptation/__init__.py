"""CEMA in the cloud (paper 002): adapt the foundation model by entropy minimisation on uploaded frames, distil it
into a copy of each device's model with a replay buffer, and publish the adapted tensors as weight updates."""
