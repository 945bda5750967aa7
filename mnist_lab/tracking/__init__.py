"""Where a run's numbers and pictures go while it trains: TensorBoard (always), and MLflow or
Weights & Biases when ``logger=`` names them (``trackers``); the TensorBoard images of digits and
confusion matrices (``tensorboard_images``), drawn straight into pixels (``drawn_images``)."""
