"""A user's picture of a digit to the network's guess: image loading, predictors, the bar chart."""
