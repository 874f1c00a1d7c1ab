"""What the model is shown and how its answer is read: prompt templates and chat layout, answer parsing, judging an answer."""
