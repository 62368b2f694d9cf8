"""What a person looks at: plots and the live training figure, kernels and feature maps, the HTML report,
and TensorBoard logs."""
