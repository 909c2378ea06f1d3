"""Data preparation: real videos -> face tracks and 68 landmarks -> crops -> shards."""
