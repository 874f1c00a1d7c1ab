"""The human study of explanations: items and blinding, ratings, agreement, the raters' page, the LLM judge, the trajectory explorer."""
