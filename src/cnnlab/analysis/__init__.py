"""Looking inside a trained model: its kernels, feature maps and mistakes as figures, and the HTML report
that gathers them with its curves and scores."""
