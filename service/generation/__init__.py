"""Generation: token language models decoded on the server (the prompt run as a stream chunk, then
each next token sampled from the last step's logits and fed back, inside the step policy)."""
