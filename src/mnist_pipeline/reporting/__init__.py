"""What a trained network is worth, in numbers and pictures: metrics, figures, comparisons."""
