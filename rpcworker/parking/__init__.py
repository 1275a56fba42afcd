"""parking"""
