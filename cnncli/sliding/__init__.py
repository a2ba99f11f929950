"""The notes' sliding-window trick: FC layers converted to convolutions, and a converted
net run over an image larger than it was trained on."""
