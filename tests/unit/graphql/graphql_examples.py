"""GitHub's documented example queries and a Relay-style SDL shaped like GitHub's.

Queries: https://docs.github.com/en/graphql/overview/rate-limits-and-query-limits-for-the-graphql-api
"""

SIMPLE = """
query {
  viewer {
    repositories(first: 50) {
      edges {
        repository:node {
          name

          issues(first: 10) {
            totalCount
            edges {
              node {
                title
                bodyHTML
              }
            }
          }
        }
      }
    }
  }
}
"""

COMPLEX = """
query {
  viewer {
    repositories(first: 50) {
      edges {
        repository:node {
          name

          pullRequests(first: 20) {
            edges {
              pullRequest:node {
                title

                comments(first: 10) {
                  edges {
                    comment:node {
                      bodyHTML
                    }
                  }
                }
              }
            }
          }

          issues(first: 20) {
            totalCount
            edges {
              issue:node {
                title
                bodyHTML

                comments(first: 10) {
                  edges {
                    comment:node {
                      bodyHTML
                    }
                  }
                }
              }
            }
          }
        }
      }
    }

    followers(first: 10) {
      edges {
        follower:node {
          login
        }
      }
    }
  }
}
"""

POINTS = """
query {
  viewer {
    login
    repositories(first: 100) {
      edges {
        node {
          id

          issues(first: 50) {
            edges {
              node {
                id

                labels(first: 60) {
                  edges {
                    node {
                      id
                      name
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
  }
}
"""

SDL = """
interface Node { id: ID! }

type PageInfo { hasNextPage: Boolean! endCursor: String }

type Query {
  viewer: User!
  node(id: ID!): Node
  search(query: String!, type: SearchType!, first: Int, last: Int): SearchResultItemConnection!
}

type Mutation {
  addStar(starrableId: ID!): AddStarPayload
  addComment(subjectId: ID!, body: String!): AddCommentPayload
}

type AddStarPayload { starrable: Repository clientMutationId: String }
type AddCommentPayload { commentEdge: IssueCommentEdge clientMutationId: String }

enum SearchType { ISSUE REPOSITORY USER }

union SearchResultItem = Issue | PullRequest | Repository | User

type SearchResultItemConnection {
  edges: [SearchResultItemEdge]
  nodes: [SearchResultItem]
  pageInfo: PageInfo!
  issueCount: Int!
}
type SearchResultItemEdge { cursor: String! node: SearchResultItem }

type User implements Node {
  id: ID!
  login: String!
  name: String
  repositories(first: Int, last: Int, after: String): RepositoryConnection!
  followers(first: Int, last: Int): FollowerConnection!
}

type Repository implements Node {
  id: ID!
  name: String!
  description: String
  stargazerCount: Int!
  owner: User!
  issues(first: Int, last: Int, states: [IssueState!]): IssueConnection!
  pullRequests(first: Int, last: Int): PullRequestConnection!
  labels(first: Int, last: Int): LabelConnection
}

enum IssueState { OPEN CLOSED }

type Issue implements Node {
  id: ID!
  title: String!
  bodyHTML: String!
  state: IssueState!
  author: User
  comments(first: Int, last: Int): IssueCommentConnection!
  labels(first: Int, last: Int): LabelConnection
}

type PullRequest implements Node {
  id: ID!
  title: String!
  comments(first: Int, last: Int): IssueCommentConnection!
  commits(first: Int, last: Int): CommitConnection!
}

type Commit implements Node { id: ID! message: String! }
type Label implements Node { id: ID! name: String! color: String! }
type IssueComment implements Node { id: ID! bodyHTML: String! author: User }

type RepositoryConnection { edges: [RepositoryEdge] nodes: [Repository] pageInfo: PageInfo! totalCount: Int! }
type RepositoryEdge { cursor: String! node: Repository }
type FollowerConnection { edges: [UserEdge] nodes: [User] pageInfo: PageInfo! totalCount: Int! }
type UserEdge { cursor: String! node: User }
type IssueConnection { edges: [IssueEdge] nodes: [Issue] pageInfo: PageInfo! totalCount: Int! }
type IssueEdge { cursor: String! node: Issue }
type PullRequestConnection { edges: [PullRequestEdge] nodes: [PullRequest] pageInfo: PageInfo! totalCount: Int! }
type PullRequestEdge { cursor: String! node: PullRequest }
type IssueCommentConnection { edges: [IssueCommentEdge] nodes: [IssueComment] pageInfo: PageInfo! totalCount: Int! }
type IssueCommentEdge { cursor: String! node: IssueComment }
type CommitConnection { edges: [CommitEdge] nodes: [Commit] pageInfo: PageInfo! totalCount: Int! }
type CommitEdge { cursor: String! node: Commit }
type LabelConnection { edges: [LabelEdge] nodes: [Label] pageInfo: PageInfo! totalCount: Int! }
type LabelEdge { cursor: String! node: Label }
"""
