"""Built-in selection methods (coresets: random, herding, k-center, k-means, class mean) - method code that ships
with the core package; registered through their entry points like every other method."""
