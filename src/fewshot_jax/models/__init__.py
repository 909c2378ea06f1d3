"""The networks of the talking-head model and the frozen perceptual nets of its content loss."""
