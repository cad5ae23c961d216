"""`kerasport import`: a user's Keras model in, as a bundle the other stages take like a trained one."""
