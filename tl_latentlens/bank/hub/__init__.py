"""Banks from elsewhere: the Hugging Face hub (:mod:`.remote`: push, download some hooks) and
indices saved by the official ``latentlens`` package (:mod:`.official`)."""
