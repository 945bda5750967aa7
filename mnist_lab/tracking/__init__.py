"""Where a run's numbers and pictures go while it trains: TensorBoard (always), and MLflow or
Weights & Biases when ``logger=`` names them (``trackers``); every step's loss appended to the
TensorBoard event file and read back for the report (``event_files``); the TensorBoard images of
digits and confusion matrices (``tensorboard_images``), drawn straight into pixels (``drawn_images``)."""
