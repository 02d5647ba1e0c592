"""What the REST API and the controllers share: the rules of Nexus's own resources.

``resources`` names the custom resources, labels, finalizers and phases; ``tenant`` and
``agent`` are typed views of NexusTenant / NexusAgent, the one builder of each body and the
``maxAgents`` rule; ``agentspec`` the rules of an astromesh/v1 Agent spec. Pure functions of
plain objects: nothing here does I/O.
"""
